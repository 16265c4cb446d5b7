//! Image references from pod specs (`reaper::image::reference::parse`, the registry client's
//! parser), `normalize_image_reference` and `image_matches` (policy `image` globs).
//!
//! Input: `<image>\n<policy glob>`.
//!
//! Checked: what parses prints (`whole()`) to a string that parses to the same reference;
//! normalising is idempotent and agrees with `parse`; Docker Hub-ness survives normalising;
//! `image_matches` never panics and stays within the CPU bound (`common::BOUND`); `*` matches
//! every image within `glob::MAX_LEN` (as written or normalised; longer texts match nothing, by
//! design); an image matches itself and its normal form (no `*` in them, within `MAX_LEN`), and so
//! does the normal form with any one slice of it made `*`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use reaper::image::glob::MAX_LEN;
use reaper::image::reference::{is_docker_hub, parse};
use reaper::image::{image_matches, normalize_image_reference};

fn matches(pattern: &str, image: &str) -> bool {
    common::bounded(&(pattern, image), || image_matches(pattern, image))
}

fuzz_target!(|data: &[u8]| {
    let (image, glob) = common::split2(data);
    let (image, glob) = (
        String::from_utf8_lossy(image),
        String::from_utf8_lossy(glob),
    );

    let parsed = parse(&image);
    let normal = normalize_image_reference(&image);
    match &parsed {
        Some(r) => {
            let whole = r.whole();
            assert_eq!(normal, whole);
            let again = parse(&whole).unwrap_or_else(|| panic!("{image:?} -> {whole:?} refused"));
            assert_eq!(&again, r, "{image:?} -> {whole:?}");
            assert_eq!(again.whole(), whole);
            assert!(r.tag().is_some() || r.digest().is_some(), "{whole:?}");
        }
        None => assert_eq!(normal, image),
    }
    assert_eq!(normalize_image_reference(&normal), normal, "not idempotent");
    assert_eq!(is_docker_hub(&normal), is_docker_hub(&image));

    let _ = matches(&glob, &image);
    assert_eq!(
        matches("*", &image),
        image.len() <= MAX_LEN || normal.len() <= MAX_LEN
    );
    for text in [&*image, &*normal] {
        if text.len() <= MAX_LEN && !text.contains('*') {
            assert!(matches(text, &image), "{text:?} vs {image:?}");
        }
    }
    if normal.len() < MAX_LEN && !normal.contains('*') && !normal.is_empty() {
        // A slice of the normal form chosen by the glob's first two bytes, made `*`.
        let b = glob.as_bytes();
        let n = normal.len();
        let mut from = common::pick(b.first().copied().unwrap_or(0), n + 1);
        let mut to = common::pick(b.get(1).copied().unwrap_or(0), n + 1);
        if from > to {
            std::mem::swap(&mut from, &mut to);
        }
        while !normal.is_char_boundary(from) {
            from -= 1;
        }
        while !normal.is_char_boundary(to) {
            to += 1;
        }
        let pattern = format!("{}*{}", &normal[..from], &normal[to..]);
        assert!(matches(&pattern, &image), "{pattern:?} vs {image:?}");
    }
});
