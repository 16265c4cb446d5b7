//! Image ENTRYPOINT/CMD resolution from OCI registries.
