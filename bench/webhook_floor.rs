//! In-process cost of one admission request: decode + plan + encode of a realistic 12 KB
//! AdmissionReview (3 containers, managedFields, 60 env vars), no network, no TLS. This is the
//! floor the HTTPS load benchmark (`bench/webhook.sh`) is compared against.
//!
//! `cargo bench --bench webhook_floor` measures for ~3 s per stage; under `cargo test` it runs a
//! few iterations as a smoke test.
use reaper::crd::PolicySet;
use reaper::image::ImageIndex;
use reaper::webhook::decide::{Config, Scope, plan};
use reaper::webhook::review::{self, PodObject};
use reaper::webhook::server::answer_sync;
use reaper::webhook::sources::{Sources, parse_policies};
use std::hint::black_box;
use std::time::{Duration, Instant};

// The same allocator as reaper-controller, so the floor is comparable.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REVIEW: &[u8] = include_bytes!("../tests/fixtures/pods/reviews/deployment-3-containers.json");
const POLICIES: &str = include_str!("webhook-policies.yaml");

/// Mean time of `f` over as many runs as fit in `budget` (at least `min_runs`).
fn measure(budget: Duration, min_runs: u32, mut f: impl FnMut()) -> (Duration, u32) {
    for _ in 0..min_runs.min(100) {
        f();
    }
    let start = Instant::now();
    let mut runs = 0;
    while runs < min_runs || start.elapsed() < budget {
        f();
        runs += 1;
    }
    (start.elapsed() / runs, runs)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (budget, min_runs) = if full {
        (Duration::from_secs(3), 1000)
    } else {
        (Duration::ZERO, 20)
    };
    let policies = parse_policies(POLICIES).expect("bench policies parse");
    let set = PolicySet::new(policies.into_iter().map(std::sync::Arc::new));
    let sources = Sources::fixed(set.clone());
    let config = Config::new("registry.example.com/reaper:0.1.0");
    let images = ImageIndex::default();

    // Sanity: the request is wrapped, as in the load benchmark.
    let answer = answer_sync(REVIEW, &config, &sources).expect("valid review");
    assert_eq!(
        answer.result, "inject",
        "the benchmark review must be injected"
    );

    let (decode, _) = measure(budget, min_runs, || {
        black_box(review::decode(black_box(REVIEW)).unwrap());
    });
    let decoded = review::decode(REVIEW).unwrap();
    let PodObject::Pod(pod) = decoded.pod else {
        panic!("not a pod")
    };
    let labels = sources.namespace_labels("apps").labels;
    let scope = Scope {
        namespace: "apps",
        namespace_labels: &labels,
    };
    let (planning, _) = measure(budget, min_runs, || {
        let p = plan(black_box(&pod), scope, &set, &images, &config);
        black_box(p.patch());
    });
    let (total, runs) = measure(budget, min_runs, || {
        black_box(answer_sync(black_box(REVIEW), &config, &sources).unwrap());
    });
    let cores = 2.0;
    println!(
        "webhook floor: review {} bytes; decode {:.1} µs, plan+patch {:.1} µs, decode+plan+encode {:.1} µs ({runs} runs)",
        REVIEW.len(),
        decode.as_secs_f64() * 1e6,
        planning.as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e6,
    );
    println!(
        "floor_us={:.2} ceiling_req_per_s_2_cores={:.0}",
        total.as_secs_f64() * 1e6,
        cores / total.as_secs_f64()
    );
}
