//! Linking components to each other: `[component.NAME]` and a route's `links`.
//!
//! A route's component may import an interface that no host provides but another component
//! exports, such as `local:greeter-demo/greet`. The config names the provider
//! (`links = { "local:greeter-demo/greet" = "greeter" }`), and [`compose`] builds, at load time,
//! one component out of the route's component and every component it links to, directly or
//! through the providers' own `links`. It uses the Bytecode Alliance's composition graph
//! (`wac-graph`):
//!
//! * every named component in the tree is instantiated once, with the exports of its providers
//!   as the imports it links;
//! * the route's component is instantiated the same way, and its exports become the exports of
//!   the whole;
//! * whatever any of them still imports (WASI, `wasi:http`, keyvalue, logging, config) becomes
//!   an import of the whole, which the gateway's linker supplies as for any other component.
//!   So a provider runs with the capabilities of the route it serves: the same environment,
//!   keyvalue grants, outbound rules and log budget.
//!
//! The result is an ordinary component: compiled once (and cached by the hash of the composed
//! bytes), pre-instantiated, and instantiated per request from the pool. A call across a link is
//! a direct call between two instances through an adapter wasmtime compiles, with no host
//! function in between, and every kind of value the component model has crosses it, resources
//! included. The cost is that each request instantiates the providers too, called or not; see
//! docs/perf.md for the numbers.
//!
//! Checked here, with errors that name the component and the interface: a link whose interface
//! the linking component does not import, a provider that does not export the interface, and
//! types that do not match. Names in `links` match an import or export exactly, without its
//! `@version`, or by semver compatibility. Cycles and unknown component names are found earlier,
//! when the config is parsed.

use crate::config::NamedComponentConfig;
use crate::runtime::component::read_binary;
use anyhow::{Context, bail};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use wac_graph::types::{Package, are_semver_compatible};
use wac_graph::{CompositionGraph, EncodeOptions, NodeId, PackageId};

/// A route's component composed with the components it links to.
pub struct Composition {
    /// The composed component, binary.
    pub bytes: Vec<u8>,
    /// Who imports each import left for the host to supply: `the route's component` or
    /// `[component.NAME]`, so that an import nothing supplies can be blamed on the right one.
    pub importers: BTreeMap<String, Vec<String>>,
}

impl Composition {
    /// The components that import `import` (by exact name, else a semver-compatible one).
    pub fn importers_of(&self, import: &str) -> &[String] {
        self.importers
            .get(import)
            .or_else(|| {
                self.importers
                    .iter()
                    .find(|(name, _)| are_semver_compatible(name, import))
                    .map(|(_, owners)| owners)
            })
            .map_or(&[], Vec::as_slice)
    }
}

/// The label of the route's own component in [`Composition::importers`].
pub const ROUTE_COMPONENT: &str = "the route's component";

/// Composes `component` with the named components its `links` reach; see the module docs.
pub fn compose(
    component: &Path,
    links: &BTreeMap<String, String>,
    named: &BTreeMap<String, NamedComponentConfig>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> anyhow::Result<Composition> {
    let mut composer = Composer {
        graph: CompositionGraph::new(),
        named,
        resolve,
        instances: HashMap::new(),
        linking: Vec::new(),
        importers: BTreeMap::new(),
    };
    let owner = Owner {
        describe: format!("component {}", component.display()),
        label: ROUTE_COMPONENT.to_string(),
    };
    let root = composer.register("wasmgate:route", component)?;
    let instance = composer.graph.instantiate(root);
    composer.link(instance, root, &owner, links)?;

    let exports: Vec<String> = composer.world(root).exports.keys().cloned().collect();
    for name in exports {
        let export = composer
            .graph
            .alias_instance_export(instance, &name)
            .with_context(|| format!("cannot re-export `{name}` of {}", owner.describe))?;
        composer
            .graph
            .export(export, name.clone())
            .with_context(|| format!("cannot re-export `{name}` of {}", owner.describe))?;
    }
    let bytes = composer
        .graph
        .encode(EncodeOptions::default())
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .context("cannot compose the linked components")?;
    Ok(Composition {
        bytes,
        importers: composer.importers,
    })
}

/// A component being linked, for messages.
struct Owner {
    /// `component PATH` or `component `NAME` (PATH)`.
    describe: String,
    /// [`ROUTE_COMPONENT`] or `[component.NAME]`.
    label: String,
}

struct Composer<'a> {
    graph: CompositionGraph,
    named: &'a BTreeMap<String, NamedComponentConfig>,
    resolve: &'a dyn Fn(&Path) -> PathBuf,
    /// Named components instantiated so far: each is instantiated once per composition, however
    /// many components link to it.
    instances: HashMap<String, (NodeId, PackageId)>,
    /// The named components being linked right now, innermost last (guards against cycles).
    linking: Vec<String>,
    /// See [`Composition::importers`].
    importers: BTreeMap<String, Vec<String>>,
}

impl Composer<'_> {
    fn register(&mut self, package: &str, path: &Path) -> anyhow::Result<PackageId> {
        let bytes = read_binary(path)?;
        let package = Package::from_bytes(package, None, bytes, self.graph.types_mut())
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .with_context(|| format!("cannot read the types of component {}", path.display()))?;
        self.graph
            .register_package(package)
            .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
    }

    fn world(&self, package: PackageId) -> &wac_graph::types::World {
        &self.graph.types()[self.graph[package].ty()]
    }

    /// Gives `instance` (of `package`) each linked interface, from its provider's instance, and
    /// records what it still imports.
    fn link(
        &mut self,
        instance: NodeId,
        package: PackageId,
        owner: &Owner,
        links: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let mut linked: BTreeMap<String, &str> = BTreeMap::new();
        for (interface, provider) in links {
            let import = find_name(self.world(package).imports.keys(), interface, "imports")
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{} cannot be linked to `{interface}`: {e} (it imports: {})",
                        owner.describe,
                        list(self.world(package).imports.keys())
                    )
                })?;
            if let Some(other) = linked.insert(import.clone(), interface) {
                bail!(
                    "{}: links `{other}` and `{interface}` both name its import `{import}`; keep one",
                    owner.describe
                );
            }
            let (provider_instance, provider_package) = self.instance_of(provider)?;
            let path = (self.resolve)(&self.named[provider].path);
            let exports = self.world(provider_package).exports.keys();
            let export = find_export(exports, &import).with_context(|| {
                format!(
                    "{} links `{interface}` to component `{provider}` ({}), which does not \
                     export `{import}` (it exports: {})",
                    owner.describe,
                    path.display(),
                    list(self.world(provider_package).exports.keys())
                )
            })?;
            let alias = self
                .graph
                .alias_instance_export(provider_instance, &export)
                .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;
            self.graph
                .set_instantiation_argument(instance, &import, alias)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{} imports `{import}` with types that do not match what component \
                         `{provider}` ({}) exports as `{export}`: {}",
                        owner.describe,
                        path.display(),
                        error_chain(&e)
                    )
                })?;
        }
        let unlinked: Vec<String> = self
            .world(package)
            .imports
            .keys()
            .filter(|name| !linked.contains_key(*name))
            .cloned()
            .collect();
        for import in unlinked {
            self.importers
                .entry(import)
                .or_default()
                .push(owner.label.clone());
        }
        Ok(())
    }

    /// The instance of the named component `name`, created (and linked) on first use.
    fn instance_of(&mut self, name: &str) -> anyhow::Result<(NodeId, PackageId)> {
        if let Some(found) = self.instances.get(name) {
            return Ok(*found);
        }
        if self.linking.iter().any(|n| n == name) {
            bail!(
                "components link in a cycle ({} -> {name})",
                self.linking.join(" -> ")
            );
        }
        let config = self
            .named
            .get(name)
            .with_context(|| format!("there is no [component.{name}]"))?;
        let path = (self.resolve)(&config.path);
        let package = self
            .register(&format!("wasmgate:named-{name}"), &path)
            .with_context(|| format!("[component.{name}]"))?;
        let instance = self.graph.instantiate(package);
        self.linking.push(name.to_string());
        let owner = Owner {
            describe: format!("component `{name}` ({})", path.display()),
            label: format!("[component.{name}]"),
        };
        self.link(instance, package, &owner, &config.links)?;
        self.linking.pop();
        self.instances.insert(name.to_string(), (instance, package));
        Ok((instance, package))
    }
}

/// The import among `names` that a link key designates: the same name; or, for a key without
/// `@version`, the one import of that interface at any version; or a semver-compatible version.
/// An error says why none, or more than one, is meant.
fn find_name<'n>(
    names: impl Iterator<Item = &'n String> + Clone,
    wanted: &str,
    what: &str,
) -> anyhow::Result<String> {
    if let Some(exact) = names.clone().find(|name| *name == wanted) {
        return Ok(exact.clone());
    }
    let matching: Vec<&String> = if wanted.contains('@') {
        names
            .filter(|name| are_semver_compatible(name, wanted))
            .collect()
    } else {
        names.filter(|name| unversioned(name) == wanted).collect()
    };
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("it {what} no `{wanted}`"),
        several => bail!(
            "`{wanted}` is ambiguous: it {what} {}; write the version in the link",
            list(several.iter().copied())
        ),
    }
}

/// The provider's export that satisfies `import`: the same name, or a semver-compatible one.
fn find_export<'n>(
    exports: impl Iterator<Item = &'n String> + Clone,
    import: &str,
) -> Option<String> {
    exports
        .clone()
        .find(|name| *name == import)
        .or_else(|| {
            exports
                .clone()
                .find(|name| are_semver_compatible(name, import))
        })
        .cloned()
}

fn unversioned(name: &str) -> &str {
    name.split_once('@')
        .map_or(name, |(unversioned, _)| unversioned)
}

fn list<'n>(names: impl Iterator<Item = &'n String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

/// An error and its sources on one line (wac-graph's errors keep the details in `source`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn link_keys_match_exactly_unversioned_or_compatibly() {
        let imports = names(&[
            "wasi:io/streams@0.2.6",
            "local:demo/greet",
            "my:pkg/api@1.2.0",
            "two:pkg/api@1.0.0",
            "two:pkg/api@2.0.0",
        ]);
        let find = |key: &str| find_name(imports.iter(), key, "imports");
        assert_eq!(find("local:demo/greet").unwrap(), "local:demo/greet");
        assert_eq!(find("my:pkg/api").unwrap(), "my:pkg/api@1.2.0");
        assert_eq!(find("my:pkg/api@1.0.0").unwrap(), "my:pkg/api@1.2.0");
        assert_eq!(
            find("two:pkg/api@2").unwrap_err().to_string(),
            "it imports no `two:pkg/api@2`"
        );
        assert_eq!(find("two:pkg/api@2.0.0").unwrap(), "two:pkg/api@2.0.0");
        let ambiguous = find("two:pkg/api").unwrap_err().to_string();
        assert!(
            ambiguous.contains("ambiguous")
                && ambiguous.contains("two:pkg/api@1.0.0, two:pkg/api@2.0.0"),
            "{ambiguous}"
        );
        assert!(find("my:pkg/api@2.0.0").is_err());
        assert!(find("local:demo/greet@0.1.0").is_err());
        assert!(find("local:demo/other").is_err());
    }

    #[test]
    fn a_provider_export_must_be_the_import_or_semver_compatible() {
        let exports = names(&[
            "local:demo/greet",
            "my:pkg/api@1.4.0",
            "other:pkg/api@2.0.0",
        ]);
        assert_eq!(
            find_export(exports.iter(), "my:pkg/api@1.2.0").as_deref(),
            Some("my:pkg/api@1.4.0")
        );
        assert_eq!(find_export(exports.iter(), "other:pkg/api@1.0.0"), None);
        assert_eq!(find_export(exports.iter(), "local:demo/greet@1.0.0"), None);
        assert_eq!(
            find_export(exports.iter(), "local:demo/greet").as_deref(),
            Some("local:demo/greet")
        );
    }
}
