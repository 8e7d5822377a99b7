//! The ML hand-off, end to end: `prismctl loadgen` sends seeded traffic whose card-testing
//! payments are reported as fraud a while later, `prism-fraud` folds it, `verify fraud` is
//! clean, `prismctl export features` writes the training set, and the example pipeline
//! (`ml/run`: pandas, pyarrow, scikit-learn) trains on the oldest 70 % and must reach a
//! test ROC AUC of at least [`MIN_AUC`] on the newest 30 %: the suspicious patterns are
//! learnable from the features. (Measured: about 0.99; see README.)

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use prism_fraud::export::{export, ExportRequest};
use prism_projector::copies::Copies as _;
use prism_tests::{repo_root, up};

use crate::e2e::TOKEN;
use crate::harness::{assert_identical, isolated, verify};

/// Well below what the features give (about 0.99), well above chance (0.5).
const MIN_AUC: &str = "0.85";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_pipeline_learns_card_testing_from_the_exported_features() {
    let _one = crate::harness::ONE_AT_A_TIME.lock().await;
    isolated(3, |env| async move {
        let (command, _fraud) = env.started().await;

        let loadgen = Command::new(env!("CARGO_BIN_EXE_prismctl"))
            .current_dir(repo_root())
            .args([
                "loadgen",
                "--url",
                &command.url,
                "--token",
                TOKEN,
                "--accounts",
                "150",
                "--commands",
                "6000",
                "--rate",
                "0",
                "--concurrency",
                "16",
                "--seed",
                "12",
                "--suspicious-share",
                "0.08",
                "--fraud-reports-after",
                "150",
                "--json",
            ])
            .output();
        let loadgen = up("prismctl loadgen", loadgen);
        let summary: serde_json::Value =
            up("loadgen's summary", serde_json::from_slice(&loadgen.stdout));
        assert!(loadgen.status.success(), "loadgen failed: {summary}");
        let reports = summary["commands"]["report_fraud"]["accepted"]
            .as_u64()
            .unwrap_or(0);
        assert!(reports > 50, "{reports} fraud reports: {summary}");

        let report = verify(&env.config, Duration::from_secs(120)).await;
        assert_identical(&report, 150);

        let copies = up(
            "redis",
            prism_fraud::copies::connect(&env.config.redis, &env.fraud()).await,
        );
        let live = up("redis", copies.live().await);
        let out = env.offline_dir.join("training.parquet");
        let request = ExportRequest {
            from: Utc::now() - chrono::Duration::days(1),
            to: Utc::now() + chrono::Duration::minutes(1),
            cutoff: Utc::now(),
            out: out.clone(),
        };
        let store = live.offline.clone();
        let exported = up(
            "the export",
            up(
                "the export's thread",
                tokio::task::spawn_blocking(move || export(&store, &request)).await,
            ),
        );
        eprintln!("export: {exported:?}");
        assert!(exported.frauds > 50, "{exported:?}");

        let trained = up(
            "ml/run (Python 3 with venv)",
            Command::new(repo_root().join("ml/run"))
                .arg(&out)
                .args(["--min-auc", MIN_AUC])
                .output(),
        );
        let printed = String::from_utf8_lossy(&trained.stdout);
        eprintln!("{printed}{}", String::from_utf8_lossy(&trained.stderr));
        assert!(
            trained.status.success(),
            "the training example failed or scored below {MIN_AUC}:\n{printed}\n{}",
            String::from_utf8_lossy(&trained.stderr)
        );
        assert!(printed.contains("ROC AUC"), "{printed}");
        command.stop().await;
    })
    .await;
}
