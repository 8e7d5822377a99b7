//! Redis through the redis crate: strings with expiry, counters, hashes.

use std::collections::HashMap;

use prism_platform::clients;
use prism_tests::{config, unique, up};
use redis::AsyncCommands;

#[tokio::test]
async fn values_counters_and_hashes_round_trip() {
    let cfg = config();
    let mut conn = up("redis", clients::redis_connection(&cfg.redis).await);
    let prefix = unique("prism-test");
    let key = |name: &str| format!("{prefix}:{name}");

    let () = up("redis", conn.set_ex(key("greeting"), "grüß dich", 60).await);
    let got: Option<String> = up("redis", conn.get(key("greeting")).await);
    assert_eq!(got.as_deref(), Some("grüß dich"));
    let ttl: i64 = up("redis", conn.ttl(key("greeting")).await);
    assert!((1..=60).contains(&ttl), "ttl {ttl}");

    let total: i64 = up(
        "redis",
        conn.incr(key("deposits_minor"), 1_000_000_000_000_i64)
            .await,
    );
    let total2: i64 = up("redis", conn.incr(key("deposits_minor"), 250).await);
    assert_eq!((total, total2), (1_000_000_000_000, 1_000_000_000_250));

    let () = up(
        "redis",
        conn.hset_multiple(key("account"), &[("status", "open"), ("currency", "EUR")])
            .await,
    );
    let account: HashMap<String, String> = up("redis", conn.hgetall(key("account")).await);
    assert_eq!(account.get("status").map(String::as_str), Some("open"));
    assert_eq!(account.get("currency").map(String::as_str), Some("EUR"));

    let missing: Option<String> = up("redis", conn.get(key("never-set")).await);
    assert_eq!(missing, None);

    let removed: usize = up(
        "redis",
        conn.del(&[key("greeting"), key("deposits_minor"), key("account")])
            .await,
    );
    assert_eq!(removed, 3);
}
