//! The CustomResourceDefinitions of Herald's API, as committed in `config/crd/`.
//!
//! The YAML files are generated from the Rust types here; `tests/crds.rs` fails when the
//! committed files drift from the types (`make crds` rewrites them).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{IPAddressPool, L2Advertisement, ServiceL2Status};

/// Every CRD with the file name it is committed under in `config/crd/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("herald.io_ipaddresspools.yaml", IPAddressPool::crd()),
        ("herald.io_l2advertisements.yaml", L2Advertisement::crd()),
        ("herald.io_servicel2statuses.yaml", ServiceL2Status::crd()),
    ]
}

/// A CRD as the YAML document committed for it.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, crate::yaml::Error> {
    let body = crate::yaml::to_string(crd)?;
    Ok(format!(
        "# Generated from herald-config's Rust types by `make crds`; do not edit by hand.\n---\n{body}"
    ))
}
