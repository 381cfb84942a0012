//! The Kubernetes target against a mock API server.
//!
//! No Kubernetes API server can run on the build machines, so these tests put kube's
//! mock service (`tower_test::mock::pair`) behind a real `kube::Client` and assert
//! the exact requests the target sends (method, path, query, content type, JSON
//! body), answering with recorded-style API responses. The generated manifests are
//! also fed to `kubectl apply --dry-run=client` (which still asks a server for API
//! discovery: a loopback stub answers that), and one test runs against a real
//! cluster when `KUBECONFIG` is set.

mod adopt;
mod apply;
mod errors;
mod mesh;
mod status;
mod support;
