//! Prometheus metrics: the shop installs `metrics-exporter-prometheus` as the
//! recorder of Tributary's metrics (`tributary::telemetry`) and serves them on
//! `GET /metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::ShopError;

/// Buckets of the duration histograms, in seconds: 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the batch-size histograms.
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the
/// same handle). Call it before starting processors, gateways and workers: they
/// take their metric handles when they start.
pub fn install() -> Result<PrometheusHandle, ShopError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS))
        .map_err(|e| ShopError::Usage(format!("metrics buckets: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            let _ = HANDLE.set(handle.clone());
            Ok(handle)
        }
        // Another thread installed ours first; any other recorder is the
        // application's choice and is not replaced.
        Err(_) => HANDLE.get().cloned().ok_or_else(|| {
            ShopError::Usage("another metrics recorder is installed in this process".into())
        }),
    }
}
