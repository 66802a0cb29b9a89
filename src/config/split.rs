//! A route's weighted `targets` (traffic splitting) and `sticky`: how a route's requests are
//! shared between component versions, or between a component and an upstream.

use super::units;
use anyhow::bail;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// One of a route's `targets`: `{ component = "v2.wasm", weight = 10 }` or
/// `{ upstream = "legacy", weight = 90 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTargetConfig {
    pub component: Option<PathBuf>,
    pub upstream: Option<String>,
    /// This target's share: its weight over the sum of the route's weights. 0 takes it out of
    /// the split while keeping it loaded.
    pub weight: u32,
    /// The `target` label in metrics; defaults to the component's file name or
    /// `upstream:NAME`.
    pub name: Option<String>,
}

/// What a split target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind<'a> {
    Component(&'a std::path::Path),
    Upstream(&'a str),
}

impl SplitTargetConfig {
    /// The target's kind; `check` has made sure it has exactly one.
    pub fn kind(&self) -> anyhow::Result<SplitKind<'_>> {
        match (&self.component, &self.upstream) {
            (Some(component), None) => Ok(SplitKind::Component(component)),
            (None, Some(upstream)) => Ok(SplitKind::Upstream(upstream)),
            (Some(_), Some(_)) => bail!("a target has both `component` and `upstream`; give one"),
            (None, None) => bail!("a target needs a `component` or an `upstream`"),
        }
    }

    /// The target's name in metrics.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match (&self.component, &self.upstream) {
            (Some(component), _) => component.file_name().map_or_else(
                || component.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            ),
            (None, Some(upstream)) => format!("upstream:{upstream}"),
            (None, None) => String::new(),
        }
    }
}

/// `sticky = { cookie = "NAME" }` or `sticky = { header = "NAME" }`: requests with the same
/// cookie or header value go to the same target (while the weights stay the same; raising a
/// target's weight moves clients only towards it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    /// A cookie the gateway sets on the first response to a client that has none.
    pub cookie: Option<String>,
    /// A header the client sends (a user id, a session); requests without it are spread by
    /// weight.
    pub header: Option<String>,
    /// How long the cookie lasts (`Max-Age`); absent, until the browser closes.
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub max_age: Option<Duration>,
}

/// What a sticky split keys on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Cookie {
        name: String,
        max_age: Option<Duration>,
    },
    Header(http::HeaderName),
}

impl Sticky {
    /// The key, checked: exactly one of `cookie` and `header`, each a valid name.
    pub fn key(&self) -> anyhow::Result<StickyKey> {
        match (&self.cookie, &self.header) {
            (Some(name), None) => {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !valid {
                    bail!("sticky cookie `{name}` is not a valid cookie name");
                }
                Ok(StickyKey::Cookie {
                    name: name.clone(),
                    max_age: self.max_age,
                })
            }
            (None, Some(name)) => {
                if self.max_age.is_some() {
                    bail!("sticky max_age is for a cookie");
                }
                match http::HeaderName::try_from(name.as_str()) {
                    Ok(header) => Ok(StickyKey::Header(header)),
                    Err(_) => bail!("sticky header `{name}` is not a valid header name"),
                }
            }
            _ => bail!("sticky needs one of `cookie` and `header`"),
        }
    }
}

/// Checks a route's `targets`: each has one kind, the weights add up to more than zero, and the
/// names are unique.
pub fn check(targets: &[SplitTargetConfig]) -> anyhow::Result<()> {
    let mut labels = std::collections::BTreeSet::new();
    let mut total = 0u64;
    for target in targets {
        target.kind()?;
        if !labels.insert(target.label()) {
            bail!(
                "two targets are named `{}`; give one a `name`",
                target.label()
            );
        }
        total += u64::from(target.weight);
    }
    if total == 0 {
        bail!("the targets' weights add up to 0; give at least one a weight");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The TOML examples of docs/splitting.md are configs the gateway takes.
    #[test]
    fn the_documented_examples_parse() {
        let configs = crate::config::documented_configs(include_str!("../../docs/splitting.md"));
        assert_eq!(configs.len(), 1);
        let route = &configs[0].routes[0];
        assert_eq!(route.targets.len(), 2);
        assert!(route.sticky.as_ref().is_some_and(|s| s.key().is_ok()));
    }
}
