//! Kafka through rdkafka: keyed messages, a consumer group, committed offsets.

use std::time::Duration;

use prism_platform::clients::kafka_client_config;
use prism_tests::{config, unique, up};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const RECEIVE_LIMIT: Duration = Duration::from_secs(30);

fn consumer(base: &ClientConfig, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = up(
        "kafka",
        base.clone()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create(),
    );
    up("kafka", consumer.subscribe(&[topic]));
    consumer
}

async fn next(consumer: &StreamConsumer) -> BorrowedMessage<'_> {
    let received = tokio::time::timeout(RECEIVE_LIMIT, consumer.recv()).await;
    let received = match received {
        Ok(r) => r,
        Err(_) => panic!("no message within {RECEIVE_LIMIT:?}"),
    };
    up("kafka", received)
}

fn payload(message: &BorrowedMessage<'_>) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

#[tokio::test]
async fn a_committed_offset_survives_a_consumer_restart() {
    let cfg = config();
    let base = kafka_client_config(&cfg.kafka);
    let topic = unique("prism-test-kafka");
    let group = unique("prism-test-group");

    let admin: AdminClient<DefaultClientContext> = up("kafka", base.create());
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = up(
        "kafka",
        admin
            .create_topics(
                &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                &options,
            )
            .await,
    );
    for result in created {
        if let Err((name, code)) = result {
            panic!("creating topic {name}: {code}");
        }
    }

    // Six events of one account: one key, so one partition, in order.
    let producer: FutureProducer = up(
        "kafka",
        base.clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create(),
    );
    let mut partitions = Vec::new();
    for i in 0..6 {
        let body = format!("event-{i}");
        let delivered = producer
            .send(
                FutureRecord::to(&topic).key("account-42").payload(&body),
                Duration::from_secs(10),
            )
            .await;
        match delivered {
            Ok(delivery) => partitions.push(delivery.partition),
            Err((e, _)) => panic!("producing to {topic}: {e}"),
        }
    }
    assert!(
        partitions.windows(2).all(|w| w[0] == w[1]),
        "one key must map to one partition: {partitions:?}"
    );

    // First consumer reads three messages and commits after the third.
    {
        let first = consumer(&base, &group, &topic);
        for i in 0..3 {
            let message = next(&first).await;
            assert_eq!(message.key(), Some(&b"account-42"[..]));
            assert_eq!(payload(&message), format!("event-{i}"));
            if i == 2 {
                up("kafka", first.commit_message(&message, CommitMode::Sync));
            }
        }
    }

    // A new consumer in the same group resumes after the committed offset.
    let second = consumer(&base, &group, &topic);
    for i in 3..6 {
        let message = next(&second).await;
        assert_eq!(payload(&message), format!("event-{i}"));
        assert_eq!(message.partition(), partitions[0]);
    }
    drop(second);

    let deleted = up("kafka", admin.delete_topics(&[&topic], &options).await);
    for result in deleted {
        if let Err((name, code)) = result {
            panic!("deleting topic {name}: {code}");
        }
    }
}
