//! The per-process registry of backend instances, keyed by scheme and configuration.
//!
//! A URI resolves to one backend instance and a key inside it. Instances (and the SDK clients
//! they hold) live in the process's [`crate::runtime::Context`], so a forked child, which gets
//! a context of its own, never uses its parent's.

use std::sync::Arc;

use crate::backend::azure::AzureBackend;
use crate::backend::gcs::GcsBackend;
use crate::backend::local::{LocalBackend, Mode};
use crate::backend::metered::Metered;
use crate::backend::s3::S3Backend;
use crate::backend::Backend;
use crate::config::StoreConfig;
use crate::error::Result;
use crate::runtime::context;
use crate::uri::Location;

/// The environment variables that change how an unset config field resolves; part of the key,
/// so a process that changes them gets a matching client.
const ENV: [&str; 5] =
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"];
/// The same for gs://.
const GCS_ENV: [&str; 5] = [
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "GCE_METADATA_HOST",
];
/// The same for az://.
const AZURE_ENV: [&str; 13] = [
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "AZURE_USE_MANAGED_IDENTITY",
];

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum RegistryKey {
    S3 { bucket: String, cfg: Box<StoreConfig>, env: Vec<Option<String>> },
    Azure { container: String, cfg: Box<StoreConfig>, env: Vec<Option<String>> },
    Gcs { bucket: String, cfg: Box<StoreConfig>, env: Vec<Option<String>> },
    Local(Mode),
}

/// The backend serving `loc` under `cfg`, and `loc`'s key inside it.
pub async fn resolve(loc: &Location, cfg: &StoreConfig) -> Result<(Arc<dyn Backend>, String)> {
    if let Some(n) = cfg.buffer_pool_bytes {
        crate::buf::set_limit(n);
    }
    let (reg_key, key) = match loc {
        Location::S3 { bucket, key } => (
            RegistryKey::S3 {
                bucket: bucket.clone(),
                cfg: Box::new(cfg.clone()),
                env: ENV.iter().map(|v| std::env::var(v).ok()).collect(),
            },
            key.clone(),
        ),
        Location::Azure { container, key } => (
            RegistryKey::Azure {
                container: container.clone(),
                cfg: Box::new(cfg.clone()),
                env: AZURE_ENV.iter().map(|v| std::env::var(v).ok()).collect(),
            },
            key.clone(),
        ),
        Location::Gcs { bucket, key } => (
            RegistryKey::Gcs {
                bucket: bucket.clone(),
                cfg: Box::new(cfg.clone()),
                env: GCS_ENV.iter().map(|v| std::env::var(v).ok()).collect(),
            },
            key.clone(),
        ),
        Location::File { path } => (RegistryKey::Local(Mode::Buffered), path.to_string_lossy().into_owned()),
        Location::Direct { path } => (RegistryKey::Local(Mode::Direct), path.to_string_lossy().into_owned()),
    };
    let ctx = context()?;
    let cached = ctx.backends().get(&reg_key);
    if let Some(b) = cached {
        return Ok((b, key));
    }
    let backend: Box<dyn Backend> = match (&reg_key, loc) {
        (RegistryKey::S3 { .. }, Location::S3 { bucket, .. }) => Box::new(S3Backend::new(bucket, cfg).await?),
        (RegistryKey::Azure { .. }, Location::Azure { container, .. }) => {
            Box::new(AzureBackend::new(container, cfg, &loc.to_uri()).await?)
        }
        (RegistryKey::Gcs { .. }, Location::Gcs { bucket, .. }) => {
            Box::new(GcsBackend::new(bucket, cfg, &loc.to_uri()).await?)
        }
        (RegistryKey::Local(mode), _) => Box::new(LocalBackend::new(*mode)),
        _ => unreachable!("the registry key is derived from the location"),
    };
    let backend: Arc<dyn Backend> = Arc::new(Metered::new(backend, ctx.metrics()));
    let b = ctx.backends().get_or_insert(reg_key, backend);
    Ok((b, key))
}
