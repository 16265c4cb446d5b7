#!/usr/bin/env python3
"""Push N small single-platform images to a plain-HTTP registry for bench/registry.sh.

Image i is `bench/app:i`, an OCI manifest with one empty layer and a config whose ENTRYPOINT is
`/app-i` (so every tag has its own manifest and config digests: a lookup of a new tag is a full
cold round trip: HEAD manifest, GET manifest, GET config blob).

Usage: registry-push.py HOST:PORT N
"""
import hashlib
import http.client
import json
import sys

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"


def digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def main() -> None:
    host, n = sys.argv[1], int(sys.argv[2])
    conn = http.client.HTTPConnection(host, timeout=30)

    def call(method, path, body=b"", headers=None):
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        if r.status >= 300:
            sys.exit(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
        return r

    def blob(b: bytes) -> dict:
        d = digest(b)
        r = call("POST", "/v2/bench/app/blobs/uploads/")
        loc = r.getheader("Location")
        loc = loc.split(host, 1)[-1] if "://" in loc else loc
        sep = "&" if "?" in loc else "?"
        call(
            "PUT",
            f"{loc}{sep}digest={d}",
            b,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(b))},
        )
        return {"digest": d, "size": len(b)}

    layer_bytes = bytes(1024)  # an empty tar archive
    layer = dict(blob(layer_bytes), mediaType=MT_LAYER)
    for i in range(n):
        cfg = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Entrypoint": [f"/app-{i}"], "Cmd": ["serve", "--port", "8080"]},
                "rootfs": {"type": "layers", "diff_ids": [digest(layer_bytes)]},
            }
        ).encode()
        config = dict(blob(cfg), mediaType=MT_CONFIG)
        manifest = json.dumps(
            {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": [layer]}
        ).encode()
        call("PUT", f"/v2/bench/app/manifests/{i}", manifest, {"Content-Type": MT_MANIFEST})


if __name__ == "__main__":
    main()
