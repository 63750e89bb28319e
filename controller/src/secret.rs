//! The speakers' shared key: shipped empty in `config/deploy`, filled here once with random
//! bytes so that no key is ever committed or typed by hand.

use std::io::Read;

use herald_config::deploy::SPEAKER_KEY_FIELD;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::leader::Leadership;

/// Fills `secretkey` with 32 random bytes if the Secret exists without one. Never replaces an
/// existing key (speakers would stop trusting each other mid-flight). Problems are logged: the
/// controller's own job does not depend on this. Only a leader writes it.
pub async fn ensure_speaker_key(client: &Client, namespace: &str, name: &str, leadership: &Leadership) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            tracing::warn!(
                secret = name,
                namespace,
                "speaker Secret not found; speakers cannot authenticate until it exists"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(secret = name, error = %e, "cannot read the speaker Secret");
            return;
        }
    };
    if secret
        .data
        .as_ref()
        .is_some_and(|d| d.get(SPEAKER_KEY_FIELD).is_some_and(|v| !v.0.is_empty()))
    {
        return;
    }
    let mut key = [0u8; 32];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)) {
        tracing::error!(error = %e, "cannot read random bytes for the speaker key");
        return;
    }
    if !leadership.may_write() {
        return;
    }
    let patch = serde_json::json!({"data": {SPEAKER_KEY_FIELD: ByteString(key.to_vec())}});
    let params = PatchParams {
        field_manager: Some(herald_config::deploy::CONTROLLER.to_string()),
        ..Default::default()
    };
    match api.patch(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => tracing::info!(secret = name, "generated the speakers' shared key"),
        Err(e) => tracing::warn!(secret = name, error = %e, "cannot write the speaker key"),
    }
}
