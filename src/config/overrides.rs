//! Settings from outside the config file, so one image serves many deployments: environment
//! variables `WASMGATE_SECTION__KEY` for every key of `[server]`, `[admin]`, `[engine]` and
//! `[logging]`, and the `serve` flags `--listen` and `--admin-listen`.
//!
//! An override replaces the key's value in the file (flags win over the environment). Its value
//! is read as a TOML value when it is one (`500`, `true`, `["10.0.0.0/8"]`), and as a string
//! otherwise (`0.0.0.0:8080`, `30s`), then checked like the file's own: an unknown key or a
//! value of the wrong type is an error naming the variable. Overrides apply again on every
//! reload.

use anyhow::{Context, bail};
use std::sync::OnceLock;

/// The sections whose keys the environment may set.
pub const SECTIONS: [&str; 4] = ["server", "admin", "engine", "logging"];

/// Every override variable starts with this.
const PREFIX: &str = "WASMGATE_";

/// One setting from outside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where it came from, for errors: `WASMGATE_SERVER__LISTEN`, `--listen`.
    pub source: String,
    pub section: String,
    pub key: String,
    pub value: String,
}

/// The `serve` flags, set once at start; reloads apply them again.
static FLAGS: OnceLock<Vec<Override>> = OnceLock::new();

/// Remembers the command line's overrides (only the first call counts).
pub fn set_flags(flags: Vec<Override>) {
    let _ = FLAGS.set(flags);
}

/// The overrides in `vars` (the process environment, in the gateway), then the flags. Variables
/// that start with `WASMGATE_` but hold no `__` are not settings (the build's own, say) and
/// are left alone.
pub fn collect(vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<Vec<Override>> {
    let mut overrides = Vec::new();
    for (name, value) in vars {
        let Some((section, key)) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once("__"))
        else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        if !SECTIONS.contains(&section.as_str()) {
            bail!(
                "environment variable {name}: `{section}` is not a section the environment can \
                 set (server, admin, engine, logging)"
            );
        }
        overrides.push(Override {
            source: name.clone(),
            section,
            key: key.to_ascii_lowercase(),
            value,
        });
    }
    overrides.sort_by(|a, b| a.source.cmp(&b.source));
    overrides.extend(FLAGS.get().into_iter().flatten().cloned());
    Ok(overrides)
}

/// Sets each override's key in the parsed file.
pub fn apply(table: &mut toml::Table, overrides: &[Override]) -> anyhow::Result<()> {
    for o in overrides {
        let section = table
            .entry(o.section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section) = section else {
            bail!("{}: [{}] in the file is not a table", o.source, o.section);
        };
        section.insert(o.key.clone(), value_of(&o.value));
    }
    Ok(())
}

/// A TOML value if the text is one, else the text as a string.
fn value_of(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// The sources of `overrides`, for an error's context.
pub fn sources(overrides: &[Override]) -> String {
    overrides
        .iter()
        .map(|o| o.source.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The flag overrides of `serve`.
pub fn flags(listen: Option<&str>, admin_listen: Option<&str>) -> Vec<Override> {
    let flag = |source: &str, section: &str, value: &str| Override {
        source: source.into(),
        section: section.into(),
        key: "listen".into(),
        value: value.into(),
    };
    let mut flags = Vec::new();
    if let Some(listen) = listen {
        flags.push(flag("--listen", "server", listen));
    }
    if let Some(admin) = admin_listen {
        flags.push(flag("--admin-listen", "admin", admin));
    }
    flags
}

/// Parses the file's text with the overrides applied.
pub fn parse_with(text: &str, overrides: &[Override]) -> anyhow::Result<super::Config> {
    // The file on its own first: its mistakes are reported with their line and key, and are
    // not blamed on the overrides.
    toml::from_str::<super::Config>(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    apply(&mut table, overrides)?;
    toml::Value::Table(table)
        .try_into()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("with the settings from {}", sources(overrides)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn variables_set_keys_with_their_types() {
        let overrides = collect(vars(&[
            ("WASMGATE_SERVER__LISTEN", "0.0.0.0:8080"),
            ("WASMGATE_ENGINE__MAX_INSTANCES", "500"),
            ("WASMGATE_SERVER__REQUEST_TIMEOUT", "5s"),
            ("WASMGATE_SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
            ("WASMGATE_LOGGING__FORMAT", "json"),
            ("WASMGATE_SKIP_GUESTS", "1"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(overrides.len(), 5, "{overrides:?}");
        let config = parse_with("[server]\nlisten = \"127.0.0.1:1\"\n", &overrides).unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.engine.max_instances, 500);
        assert_eq!(
            config.server.request_timeout,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(
            config.server.trusted_proxies,
            vec!["10.0.0.0/8".to_string()]
        );
    }

    #[test]
    fn a_mistake_in_the_file_keeps_its_line_with_overrides_set() {
        let overrides = collect(vars(&[("WASMGATE_ENGINE__MAX_INSTANCES", "5")])).unwrap();
        let error = format!(
            "{:#}",
            parse_with("[server]\nlisten = \"127.0.0.1:1\"\nnope = 1\n", &overrides).unwrap_err()
        );
        assert!(
            error.contains("line 3") && error.contains("nope"),
            "{error}"
        );
        assert!(
            !error.contains("WASMGATE_"),
            "not blamed on the overrides: {error}"
        );
    }

    #[test]
    fn unknown_sections_keys_and_bad_values_name_the_variable() {
        let section = collect(vars(&[("WASMGATE_ROUTE__PATH", "/")])).unwrap_err();
        assert!(
            section.to_string().contains("WASMGATE_ROUTE__PATH"),
            "{section}"
        );
        for (name, value) in [
            ("WASMGATE_SERVER__NO_SUCH_KEY", "1"),
            ("WASMGATE_ENGINE__MAX_INSTANCES", "many"),
        ] {
            let overrides = collect(vars(&[(name, value)])).unwrap();
            let error = format!("{:#}", parse_with("", &overrides).unwrap_err());
            assert!(error.contains(name), "{error}");
        }
    }
}
