//! The Elasticsearch checkpoint storage (`checkpoint::elasticsearch`) against the real
//! OpenSearch of the local stack: the fence, `record_error` and version documents. Each
//! test has a scratch checkpoint index of its own, deleted at the end.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use elasticsearch::indices::{IndicesCreateParts, IndicesDeleteParts};
use futures::FutureExt as _;
use prism_projector::checkpoint::elasticsearch::{read, Checkpoints, Store};
use prism_projector::checkpoint::LAST_ERROR_MAX;
use prism_projector::{AccountVersion, PositionUpdate, SinkError};
use uuid::Uuid;

/// Runs `body` on a fresh checkpoint index (created with the kit's mapping), then deletes
/// the index whatever happened.
async fn with_checkpoints<F, Fut>(body: F)
where
    F: FnOnce(Checkpoints) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = prism_tests::config();
    let client = prism_tests::up(
        "elasticsearch",
        prism_platform::clients::elasticsearch(&config.elasticsearch),
    );
    let index = prism_tests::unique("prism-test-checkpoints").replace('_', "-");
    let (status, answer) = prism_tests::up(
        "elasticsearch",
        read(
            client
                .indices()
                .create(IndicesCreateParts::Index(&index))
                .body(prism_projector::checkpoint::elasticsearch::index_body(
                    0, 1_000,
                ))
                .send()
                .await,
        )
        .await,
    );
    assert!(
        (200..300).contains(&status),
        "creating {index}: {status} {answer}"
    );
    let checkpoints = Checkpoints::new(Store::new(client.clone(), "the test store"), &index);
    let outcome = AssertUnwindSafe(body(checkpoints)).catch_unwind().await;
    let dropped = client
        .indices()
        .delete(IndicesDeleteParts::Index(&[&index]))
        .send()
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    if let Err(e) = dropped {
        panic!("deleting {index}: {e}");
    }
}

fn update(expected: Option<i64>, offset: i64, writer: &str) -> PositionUpdate {
    PositionUpdate {
        partition: 3,
        expected,
        offset,
        event_id: Some(Uuid::new_v4()),
        event_time: Some(chrono::Utc::now()),
        writer: writer.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_storing_from_the_same_read_the_second_is_fenced_and_the_first_stays() {
    with_checkpoints(|checkpoints| async move {
        // No document yet: both create; the second finds the first's.
        let first = update(None, 10, "writer-a");
        let second = update(None, 12, "writer-b");
        checkpoints
            .store_position(&first, None)
            .await
            .expect("the first create");
        match checkpoints.store_position(&second, None).await {
            Err(SinkError::Fenced {
                partition: 3,
                stored: Some(10),
            }) => {}
            other => panic!("expected Fenced at 10, got {other:?}"),
        }

        // Both read the stored position, then both store the next one from that read.
        let read_a = checkpoints
            .read_position(3)
            .await
            .expect("read")
            .expect("a doc");
        let read_b = checkpoints
            .read_position(3)
            .await
            .expect("read")
            .expect("a doc");
        assert_eq!(read_a, read_b);
        let a = update(Some(10), 20, "writer-a");
        let b = update(Some(10), 30, "writer-b");
        let written_a = checkpoints
            .store_position(&a, Some(&read_a))
            .await
            .expect("the first writer's position");
        match checkpoints.store_position(&b, Some(&read_b)).await {
            Err(SinkError::Fenced {
                partition: 3,
                stored: Some(20),
            }) => {}
            other => panic!("expected Fenced at 20, got {other:?}"),
        }

        // The stored document is the first writer's, whole.
        let stored = checkpoints
            .read_position(3)
            .await
            .expect("read")
            .expect("a doc");
        assert_eq!(stored.doc.offset, 20);
        assert_eq!(stored.doc.writer, "writer-a");
        // What the store answered is what a read finds: the same write, the same document.
        assert!(written_a.same_write(&stored), "{written_a:?} vs {stored:?}");
        assert_eq!(written_a, stored);
        assert!(!read_a.same_write(&stored));
        assert_eq!(stored.doc.event_id, a.event_id);
        let positions = checkpoints.positions(&[3, 4]).await.expect("positions");
        assert_eq!(positions.len(), 1, "{positions:?}");
        assert_eq!(positions[0].offset, 20);
        assert_eq!(positions[0].event_id, a.event_id);

        // The second writer re-reads and goes on from the stored position.
        let again = checkpoints
            .read_position(3)
            .await
            .expect("read")
            .expect("a doc");
        checkpoints
            .store_position(&update(Some(20), 30, "writer-b"), Some(&again))
            .await
            .expect("the second writer after a re-read");
        let stored = checkpoints
            .read_position(3)
            .await
            .expect("read")
            .expect("a doc");
        assert_eq!(
            (stored.doc.offset, stored.doc.writer.as_str()),
            (30, "writer-b")
        );
        // The first writer's last write is no longer what is stored.
        assert!(!written_a.same_write(&stored));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_an_error_keeps_the_offset_and_invents_no_position() {
    with_checkpoints(|checkpoints| async move {
        let position = update(None, 7, "writer-a");
        let written = checkpoints
            .store_position(&position, None)
            .await
            .expect("the position");
        let long = "x".repeat(LAST_ERROR_MAX + 50);
        checkpoints
            .record_error(3, &long)
            .await
            .expect("recording an error");

        let stored = checkpoints
            .read_position(3)
            .await
            .expect("read")
            .expect("a doc");
        assert_eq!(stored.doc.offset, 7);
        assert_eq!(stored.doc.event_id, position.event_id);
        assert_eq!(stored.doc.writer, "writer-a");
        let error = stored.doc.last_error.clone().expect("the last error");
        assert_eq!(error.chars().count(), LAST_ERROR_MAX);
        assert!(error.ends_with('…'));
        assert!(stored.doc.last_error_at.is_some());
        // An error recorded is a write of the document: state kept since the position was
        // stored is no longer known to be current.
        assert!(!written.same_write(&stored));

        // A partition never written: no document appears.
        checkpoints
            .record_error(5, "boom")
            .await
            .expect("recording on an unknown partition");
        assert!(checkpoints.read_position(5).await.expect("read").is_none());

        // The next position keeps the error visible until the next one.
        checkpoints
            .store_position(&update(Some(7), 9, "writer-a"), Some(&stored))
            .await
            .expect("the next position");
        let next = checkpoints
            .read_position(3)
            .await
            .expect("read")
            .expect("a doc");
        assert_eq!(next.doc.offset, 9);
        assert_eq!(next.doc.last_error, Some(error));

        // The status listing (a search) shows it once the index is refreshed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let statuses = checkpoints.statuses().await.expect("statuses");
            if let [status] = statuses.as_slice() {
                if status.offset == 9 {
                    assert_eq!(status.partition, 3);
                    assert!(status.last_error.is_some());
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "statuses never showed offset 9: {statuses:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_document_loses_to_a_newer_one() {
    with_checkpoints(|checkpoints| async move {
        let account = Uuid::new_v4();
        let version = |version| AccountVersion {
            account_id: account,
            version,
            event_id: Uuid::new_v4(),
        };
        for v in [5, 3, 5] {
            let lines = checkpoints.version_lines(&[version(v)]).expect("lines");
            checkpoints
                .store()
                .bulk(&lines, 1 << 20, "writing versions")
                .await
                .expect("an older or equal version counts as done");
        }
        let versions = checkpoints
            .versions(&[account, Uuid::new_v4()], None)
            .await
            .expect("versions");
        assert_eq!(versions.len(), 1, "{versions:?}");
        assert_eq!(versions.get(&account), Some(&5));
    })
    .await;
}
