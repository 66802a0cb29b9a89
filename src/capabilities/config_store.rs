//! `wasi:config/store@0.2.0-draft`: a route's `config` table, read-only, for its component.
//!
//! Values may name environment variables of the gateway as `${NAME}`; they are resolved once,
//! when the config is loaded, and a variable that is not set is a config error naming the route,
//! the key and the variable.

use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/deps/config-0.2.0-draft",
        world: "wasi:config/imports",
    });
}

use bindings::wasi::config::store;

/// A route's resolved config values.
pub type ConfigValues = Arc<BTreeMap<String, String>>;

/// Resolves `${NAME}` references with `lookup` (the process environment in the gateway).
pub fn resolve(
    values: &BTreeMap<String, String>,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<ConfigValues> {
    let mut resolved = BTreeMap::new();
    for (key, value) in values {
        let value =
            expand_env(value, &lookup).map_err(|e| anyhow::anyhow!("config key `{key}`: {e}"))?;
        resolved.insert(key.clone(), value);
    }
    Ok(Arc::new(resolved))
}

/// `value` with each `${NAME}` replaced by what `lookup` finds for NAME; a variable that is not
/// set is an error. The one reading of `${NAME}` in the config (route `config` values, S3
/// credentials).
pub fn expand_env(value: &str, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow::anyhow!("`${{` without a closing `}}`"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            anyhow::bail!("`${{{name}}}` is not an environment variable name");
        }
        let found = lookup(name)
            .ok_or_else(|| anyhow::anyhow!("environment variable `{name}` is not set"))?;
        out.push_str(&found);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What the host functions see.
pub struct ConfigView<'a> {
    pub values: &'a ConfigValues,
}

struct Config;

impl HasData for Config {
    type Data<'a> = ConfigView<'a>;
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> ConfigView<'_>,
) -> anyhow::Result<()> {
    store::add_to_linker::<T, Config>(linker, view)?;
    Ok(())
}

impl store::Host for ConfigView<'_> {
    fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        Ok(self.values.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        Ok(self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_references_are_resolved() {
        let env = |name: &str| (name == "REGION").then(|| "eu-1".to_string());
        let resolved = resolve(
            &values(&[
                ("url", "https://${REGION}.example.com/${REGION}"),
                ("plain", "x"),
            ]),
            env,
        )
        .unwrap();
        assert_eq!(resolved["url"], "https://eu-1.example.com/eu-1");
        assert_eq!(resolved["plain"], "x");
    }

    #[test]
    fn missing_or_malformed_references_are_errors() {
        let none = |_: &str| None;
        let err = resolve(&values(&[("k", "${NOPE}")]), none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config key `k`") && err.contains("`NOPE` is not set"),
            "{err}"
        );
        assert!(resolve(&values(&[("k", "${OPEN")]), none).is_err());
        assert!(resolve(&values(&[("k", "${a-b}")]), none).is_err());
    }
}
