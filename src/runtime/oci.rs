//! Components from OCI registries: `component = "oci://registry.example.com/team/hello:1.2.0"`
//! (or `...@sha256:<digest>`), published as `wkg`, `wash` and `spin registry` publish them: an
//! image manifest with one `application/wasm` layer.
//!
//! Before a generation is built, [`localize`] resolves every `oci://` reference in the config
//! and makes each component a file in a content-addressed store under `[engine] cache_dir`;
//! the loader then sees an ordinary file, so everything a file gets (the compile cache, which is
//! keyed by the bytes' sha256, linking, error messages) a pulled component gets too. The store:
//!
//! ```text
//! <cache_dir>/oci/blobs/sha256/<hex>.wasm      a component, named by its layer digest
//! <cache_dir>/oci/manifests/sha256/<hex>       the layer digest that manifest names
//! <cache_dir>/oci/tags/<sha256 of reference>   the manifest digest a tag last resolved to
//! ```
//!
//! A digest reference whose component is in the store needs no network at all. A tag is asked of
//! the registry at every load (start, reload), so a reload picks up a moved tag; when the
//! registry cannot be reached, the digest it last resolved to is used, with a warning, so a
//! registry outage does not stop a restart. Every blob is checked against its digest when it is
//! downloaded and again when it is read back from the store.
//!
//! Credentials, per registry: `[registry.auth."HOST"]`, else the docker config file
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, credential helpers included), else
//! anonymous. Registries listed in `[registry] insecure` are reached over plain HTTP.

use crate::capabilities::config_store::expand_env;
use crate::config::{Config, RegistryConfig};
use crate::runtime::component::{sha256_hex, write_atomically};
use anyhow::{Context, bail};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a component path starts with when it names a registry reference.
pub const SCHEME: &str = "oci://";

/// Layer media types that hold a component: `application/wasm` (wkg, wash) and the one
/// `spin registry` gives each component of an app.
const WASM_LAYER_TYPES: [&str; 2] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// The reference a component path names, if it is an `oci://` one.
pub fn reference_of(path: &Path) -> Option<&str> {
    path.to_str()?.strip_prefix(SCHEME)
}

/// `config` with every `oci://` component replaced by the path of its file in the store; the
/// config itself when it names none. See the module docs.
pub fn localize(config: &Config) -> anyhow::Result<std::borrow::Cow<'_, Config>> {
    let references = references(config);
    if references.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(config));
    }
    let Some(cache_dir) = config.cache_dir() else {
        bail!(
            "components from a registry ({SCHEME}...) are kept in [engine] cache_dir, which is \
             off (\"\"): set it to a writable directory"
        );
    };
    // Absolute, so the files handed to the loader do not resolve against the config's
    // directory a second time.
    let cache_dir = std::path::absolute(&cache_dir)
        .with_context(|| format!("cannot resolve the cache directory {}", cache_dir.display()))?;
    let store = Store::open(&cache_dir.join("oci"))?;
    let pulled = pull_all(&store, &config.registry, references)?;
    let mut localized = config.clone();
    let local = |path: &mut PathBuf| {
        if let Some(file) = reference_of(path).and_then(|r| pulled.get(r)) {
            *path = file.clone();
        }
    };
    for route in &mut localized.routes {
        route.component.as_mut().map(local);
        for target in &mut route.targets {
            target.component.as_mut().map(local);
        }
    }
    for component in localized.components.values_mut() {
        local(&mut component.path);
    }
    localized.pulled = pulled
        .into_iter()
        .map(|(reference, file)| (file, format!("{SCHEME}{reference}")))
        .collect();
    Ok(std::borrow::Cow::Owned(localized))
}

/// Every distinct `oci://` reference in the config, without the scheme.
fn references(config: &Config) -> Vec<String> {
    let mut references: Vec<String> = config
        .routes
        .iter()
        .flat_map(|route| route.component_files())
        .chain(config.components.values().map(|c| c.path.as_path()))
        .filter_map(reference_of)
        .map(str::to_string)
        .collect();
    references.sort();
    references.dedup();
    references
}

/// Resolves and pulls `references` concurrently, each within `[registry] timeout`. Loading is
/// synchronous and may run on a runtime's blocking thread or on none at all, so the pulls run
/// on a runtime of their own on a thread of their own.
fn pull_all(
    store: &Store,
    settings: &RegistryConfig,
    references: Vec<String>,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    // reqwest's rustls uses the process's default provider: the same ring the rest of the
    // gateway uses. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_from(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(settings.insecure.clone()),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        user_agent: concat!("wasmgate/", env!("CARGO_PKG_VERSION")),
        // An image index names images per platform; a component has no platform.
        platform_resolver: None,
        ..ClientConfig::default()
    })
    .context("cannot make the registry client")?;
    let pulls = references.into_iter().map(|reference| {
        let client = &client;
        async move {
            let file = pull(client, store, settings, &reference)
                .await
                .with_context(|| format!("component {SCHEME}{reference}"))?;
            anyhow::Ok((reference, file))
        }
    });
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the registry client's runtime")?;
                runtime.block_on(futures::future::try_join_all(pulls))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("pulling components from registries panicked"))?
    })
    .map(|pulled| pulled.into_iter().collect())
}

/// The store file of `reference`'s component, pulled if the store does not have it.
async fn pull(
    client: &Client,
    store: &Store,
    settings: &RegistryConfig,
    text: &str,
) -> anyhow::Result<PathBuf> {
    let reference: Reference = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("not a valid registry reference (registry/repository:tag or @sha256:...)")?;
    if let Some(digest) = reference.digest()
        && let Some(file) = store.component_of_manifest(digest)?
    {
        tracing::info!(component = %reference, file = %file.display(), "component from the registry cache");
        return Ok(file);
    }
    let auth = credentials(reference.resolve_registry(), settings).await?;
    let asked = tokio::time::timeout(
        settings.timeout,
        client.pull_image_manifest(&reference, &auth),
    )
    .await;
    let (manifest, manifest_digest) = match asked {
        Ok(Ok(found)) => found,
        failed => {
            let (unreachable, error) = match failed {
                Ok(Err(error)) => (registry_unreachable(&error), anyhow::Error::new(error)),
                _ => (
                    true,
                    anyhow::anyhow!(
                        "no answer within [registry] timeout ({:?})",
                        settings.timeout
                    ),
                ),
            };
            let error = error.context(format!(
                "cannot get the manifest from {}",
                reference.resolve_registry()
            ));
            // A tag resolved before still names a component in the store: serve that rather
            // than fail to start while the registry is away. A registry that answers (not
            // found, not authorized) is believed.
            if unreachable
                && reference.digest().is_none()
                && let Some(digest) = store.last_resolved(text)?
                && let Some(file) = store.component_of_manifest(&digest)?
            {
                tracing::warn!(
                    component = %reference, digest = %digest, error = %format!("{error:#}"),
                    "the registry cannot be reached; using the digest this tag last resolved to"
                );
                return Ok(file);
            }
            return Err(error);
        }
    };
    let layer = wasm_layer(&manifest.layers)?;
    let size = u64::try_from(layer.size)
        .map_err(|_| anyhow::anyhow!("its manifest gives the layer a size of {}", layer.size))?;
    if size > settings.max_component_size {
        bail!(
            "its layer is {size} bytes, more than [registry] max_component_size ({} bytes)",
            settings.max_component_size
        );
    }
    let file = match store.blob(&layer.digest)? {
        Some(file) => file,
        None => {
            let downloading = download(client, &reference, layer, size);
            let bytes = tokio::time::timeout(settings.timeout, downloading)
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "not downloaded within [registry] timeout ({:?})",
                        settings.timeout
                    )
                })
                .and_then(|downloaded| downloaded)
                .with_context(|| format!("cannot download layer {}", layer.digest))?;
            store.put_blob(&layer.digest, &bytes)?
        }
    };
    store.remember_manifest(&manifest_digest, &layer.digest)?;
    if reference.digest().is_none() {
        store.remember_tag(text, &manifest_digest)?;
    }
    tracing::info!(
        component = %reference, digest = %manifest_digest, file = %file.display(),
        "pulled component from the registry"
    );
    Ok(file)
}

/// The bytes of `layer`, no more than the `size` its manifest gives (a registry that sends more
/// is refused before it fills memory). Their digest is checked when they are stored.
async fn download(
    client: &Client,
    reference: &Reference,
    layer: &OciDescriptor,
    size: u64,
) -> anyhow::Result<Vec<u8>> {
    use futures::StreamExt;
    let mut stream = client.pull_blob_stream(reference, layer).await?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(64 << 20));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if bytes.len() as u64 + chunk.len() as u64 > size {
            bail!("the registry sent more than the {size} bytes the manifest gives the layer");
        }
        bytes.extend_from_slice(&chunk);
    }
    if (bytes.len() as u64) < size {
        bail!(
            "the registry sent {} of the {size} bytes the manifest gives the layer",
            bytes.len()
        );
    }
    Ok(bytes)
}

/// Whether `error` says the registry could not be reached or failed itself (a connection that
/// failed or timed out, a 5xx), rather than answering.
fn registry_unreachable(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500,
        _ => false,
    }
}

/// The one layer that holds the component.
fn wasm_layer(layers: &[OciDescriptor]) -> anyhow::Result<&OciDescriptor> {
    let mut wasm = layers
        .iter()
        .filter(|layer| WASM_LAYER_TYPES.contains(&layer.media_type.as_str()));
    match (wasm.next(), wasm.next()) {
        (Some(layer), None) => Ok(layer),
        (None, _) => {
            let found: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
            bail!(
                "it is not a Wasm component artifact: no layer of type {} (its layers: {})",
                WASM_LAYER_TYPES.join(" or "),
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            )
        }
        (Some(_), Some(_)) => bail!(
            "it has several Wasm layers (an application of many components?): publish the \
             component on its own"
        ),
    }
}

/// How long a docker credential helper may take to answer.
const CREDENTIAL_HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The credentials for `registry`; see the module docs. A credential helper is a program the
/// docker config names: it runs on a blocking thread, within [`CREDENTIAL_HELPER_TIMEOUT`].
async fn credentials(registry: &str, settings: &RegistryConfig) -> anyhow::Result<RegistryAuth> {
    if let Some(configured) = settings.auth.get(registry) {
        let env = |name: &str| std::env::var(name).ok();
        let username = expand_env(&configured.username, env)
            .with_context(|| format!("[registry.auth.\"{registry}\"] username"))?;
        let password = expand_env(&configured.password, env)
            .with_context(|| format!("[registry.auth.\"{registry}\"] password"))?;
        return Ok(RegistryAuth::Basic(username, password));
    }
    use docker_credential::{CredentialRetrievalError, DockerCredential};
    let server = registry.to_string();
    let lookup = tokio::task::spawn_blocking(move || docker_credential::get_credential(&server));
    let found = match tokio::time::timeout(CREDENTIAL_HELPER_TIMEOUT, lookup).await {
        Ok(Ok(found)) => found,
        Ok(Err(_)) => bail!("reading docker credentials for {registry} panicked"),
        Err(_) => bail!(
            "the docker credential helper for {registry} did not answer within \
             {CREDENTIAL_HELPER_TIMEOUT:?}"
        ),
    };
    match found {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(RegistryAuth::Basic(username, password))
        }
        Ok(DockerCredential::IdentityToken(_)) => {
            tracing::warn!(
                registry,
                "the docker config holds an identity token for this registry, which wasmgate \
                 cannot use; pulling anonymously (give [registry.auth] instead)"
            );
            Ok(RegistryAuth::Anonymous)
        }
        Err(
            CredentialRetrievalError::ConfigNotFound
            | CredentialRetrievalError::NoCredentialConfigured,
        ) => Ok(RegistryAuth::Anonymous),
        // Most often there is no docker config file at all.
        Err(CredentialRetrievalError::ConfigReadError) => {
            tracing::debug!(
                registry,
                "no readable docker config file; pulling anonymously"
            );
            Ok(RegistryAuth::Anonymous)
        }
        Err(error) => {
            tracing::warn!(registry, error = %error, "cannot read docker credentials; pulling anonymously");
            Ok(RegistryAuth::Anonymous)
        }
    }
}

/// The content-addressed store of pulled components; see the module docs.
struct Store {
    root: PathBuf,
}

impl Store {
    fn open(root: &Path) -> anyhow::Result<Store> {
        for dir in ["blobs/sha256", "manifests/sha256", "tags"] {
            std::fs::create_dir_all(root.join(dir))
                .with_context(|| format!("cannot create {}", root.join(dir).display()))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The stored component a manifest names, if both are in the store.
    fn component_of_manifest(&self, manifest_digest: &str) -> anyhow::Result<Option<PathBuf>> {
        let record = self
            .root
            .join("manifests")
            .join(digest_path(manifest_digest)?);
        match std::fs::read_to_string(&record) {
            Ok(layer) => self.blob(layer.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", record.display())),
        }
    }

    /// The stored blob `digest` names, if it is there and its bytes match the digest. A blob
    /// that does not match is removed, to be downloaded again.
    fn blob(&self, digest: &str) -> anyhow::Result<Option<PathBuf>> {
        let file = self.blob_path(digest)?;
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        if sha256_digest(&bytes) == digest {
            return Ok(Some(file));
        }
        tracing::warn!(file = %file.display(), "a stored component does not match its digest; downloading it again");
        let _ = std::fs::remove_file(&file);
        Ok(None)
    }

    /// Stores `bytes` as the blob `digest`, after checking that they are.
    fn put_blob(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
        let actual = sha256_digest(bytes);
        if actual != digest {
            bail!("the registry sent a layer whose digest is {actual}, not {digest}");
        }
        let file = self.blob_path(digest)?;
        write_atomically(&file, bytes)?;
        Ok(file)
    }

    fn remember_manifest(&self, manifest_digest: &str, layer_digest: &str) -> anyhow::Result<()> {
        let record = self
            .root
            .join("manifests")
            .join(digest_path(manifest_digest)?);
        write_atomically(&record, layer_digest.as_bytes())
    }

    fn remember_tag(&self, reference: &str, manifest_digest: &str) -> anyhow::Result<()> {
        write_atomically(&self.tag_path(reference), manifest_digest.as_bytes())
    }

    fn last_resolved(&self, reference: &str) -> anyhow::Result<Option<String>> {
        let record = self.tag_path(reference);
        match std::fs::read_to_string(&record) {
            Ok(digest) => Ok(Some(digest.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", record.display())),
        }
    }

    fn blob_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        let mut path = self.root.join("blobs").join(digest_path(digest)?);
        path.set_extension("wasm");
        Ok(path)
    }

    fn tag_path(&self, reference: &str) -> PathBuf {
        let name = sha256_hex(reference.as_bytes());
        self.root.join("tags").join(name)
    }
}

/// `sha256:<hex>` as the relative path `sha256/<hex>`; other algorithms are refused.
fn digest_path(digest: &str) -> anyhow::Result<PathBuf> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(Path::new("sha256").join(hex))
        }
        _ => bail!("digest `{digest}` is not a sha256 digest; only sha256 is supported"),
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str) -> OciDescriptor {
        OciDescriptor {
            media_type: media_type.to_string(),
            ..OciDescriptor::default()
        }
    }

    #[test]
    fn the_one_wasm_layer_is_chosen() {
        let layers = [
            layer("application/vnd.wasm.config.v0+json"),
            layer("application/wasm"),
        ];
        assert_eq!(wasm_layer(&layers).unwrap().media_type, "application/wasm");
        let error =
            wasm_layer(&[layer("application/vnd.oci.image.layer.v1.tar+gzip")]).unwrap_err();
        assert!(format!("{error}").contains("tar+gzip"), "{error}");
        let two = [layer("application/wasm"), layer("application/wasm")];
        assert!(wasm_layer(&two).is_err());
    }

    #[test]
    fn digests_become_paths_only_when_they_are_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_path(&format!("sha256:{hex}")).unwrap(),
            Path::new("sha256").join(&hex)
        );
        assert!(digest_path("sha256:../../etc/passwd").is_err());
        assert!(digest_path(&format!("sha512:{hex}")).is_err());
    }

    #[test]
    fn the_store_refuses_bytes_that_are_not_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = sha256_digest(b"component");
        assert!(store.put_blob(&digest, b"something else").is_err());
        let file = store.put_blob(&digest, b"component").unwrap();
        assert_eq!(store.blob(&digest).unwrap(), Some(file.clone()));
        // Damaged on disk: not served, removed.
        std::fs::write(&file, b"damaged").unwrap();
        assert_eq!(store.blob(&digest).unwrap(), None);
        assert!(!file.exists());
    }
}
