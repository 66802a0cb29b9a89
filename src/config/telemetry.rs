//! `[tracing]`: OpenTelemetry traces exported over OTLP (see `crate::otel`). Off unless
//! `otlp_endpoint` is set.

use super::units;
use anyhow::bail;
use serde::Deserialize;
use std::time::Duration;

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP address, e.g. `http://otel-collector:4318`; spans are posted
    /// to its `/v1/traces` (or to the path given, if there is one). Absent: tracing is off.
    pub otlp_endpoint: Option<String>,
    /// The share of traces started here that are recorded and exported, from 0 to 1. A request
    /// whose `traceparent` says whether its trace is sampled follows that decision instead.
    pub sampling_ratio: f64,
    /// `service.name` on every span.
    pub service_name: String,
    /// How long one export to the collector may take.
    #[serde(deserialize_with = "units::duration")]
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sampling_ratio: 1.0,
            service_name: "wasmgate".to_string(),
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TracingConfig {
    /// Checks what serde cannot.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            bail!(
                "[tracing] sampling_ratio must be from 0 to 1, not {}",
                self.sampling_ratio
            );
        }
        if self.service_name.is_empty() {
            bail!("[tracing] service_name must not be empty");
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            self.traces_url()
                .map_err(|e| anyhow::anyhow!("[tracing] otlp_endpoint `{endpoint}`: {e}"))?;
        }
        Ok(())
    }

    /// The URL spans are posted to: `otlp_endpoint`, with `/v1/traces` when it has no path.
    pub fn traces_url(&self) -> anyhow::Result<Option<String>> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| anyhow::anyhow!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => bail!("give an http:// or https:// URL (OTLP over HTTP)"),
        }
        if uri.host().is_none() {
            bail!("it has no host");
        }
        Ok(Some(match uri.path() {
            "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            _ => endpoint.clone(),
        }))
    }
}
