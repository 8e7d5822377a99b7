//! `prismctl verify search`: the live copy's documents against the documents this crate's
//! fold makes from the event store (the kit's [`Verify`]).
//!
//! Both sides are read into the typed documents ([`AccountDoc`], [`TransactionDoc`]) and
//! written back as JSON, so the comparison is of what an analyst sees, not of how the
//! engine spells a date. The stored side is read with the scroll API (both engines have
//! it) through the live aliases, sorted by `_doc`, a page of [`PAGE`] at a time.

use anyhow::{bail, Context};
use async_trait::async_trait;
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use prism_events::Envelope;
use prism_projector::fold::{fold_history, Fold};
use prism_projector::verify::{Snapshot, Stored, Verify};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::copies::SearchCopies;
use crate::fold::{fold, AccountDoc, Rejection, TransactionDoc};
use crate::index::Names;

/// Documents per scroll page.
const PAGE: usize = 2_000;
/// How long the engine keeps a scroll between pages.
const KEEP_ALIVE: &str = "2m";

/// The search fold as the kit sees it: the account document is the state; the transaction
/// document (deposits, withdrawals, card payments) is the effect.
#[derive(Debug)]
pub struct SearchFold;

impl Fold for SearchFold {
    type Account = AccountDoc;
    type Effect = Option<TransactionDoc>;
    type Rejection = Rejection;

    fn fold(
        current: Option<&AccountDoc>,
        event: &Envelope,
    ) -> Result<(AccountDoc, Option<TransactionDoc>), Rejection> {
        fold(current, event).map(|f| (f.account, f.transaction))
    }
}

/// The key of an account document in a [`Snapshot`].
pub fn account_key(doc: &AccountDoc) -> String {
    format!("accounts/{}", doc.account_id)
}

/// The key of a transaction document in a [`Snapshot`].
pub fn transaction_key(doc: &TransactionDoc) -> String {
    format!("transactions/{}", doc.event_id)
}

/// The search model's side of `verify`.
#[derive(Debug, Clone)]
pub struct SearchVerify {
    client: Elasticsearch,
    names: Names,
}

impl SearchVerify {
    pub fn new(copies: &SearchCopies) -> Self {
        Self {
            client: copies.client().clone(),
            names: copies.names().clone(),
        }
    }
}

#[async_trait]
impl Verify for SearchVerify {
    async fn stored(&self) -> anyhow::Result<Stored> {
        let mut stored = Stored::default();
        let accounts: Vec<AccountDoc> =
            scroll_all(&self.client, &self.names.accounts_alias()).await?;
        for doc in accounts {
            stored.versions.insert(doc.account_id, doc.version);
            stored.documents.insert(account_key(&doc), canonical(&doc)?);
        }
        let transactions: Vec<TransactionDoc> =
            scroll_all(&self.client, &self.names.transactions_alias()).await?;
        for doc in transactions {
            stored
                .documents
                .insert(transaction_key(&doc), canonical(&doc)?);
        }
        Ok(stored)
    }

    fn expected(&self, events: Vec<Envelope>) -> Snapshot {
        expected(events)
    }
}

/// The documents a fold of `events` gives (pure).
pub fn expected(events: Vec<Envelope>) -> Snapshot {
    let history = fold_history::<SearchFold>(events, |doc| doc.version);
    let mut snapshot = Snapshot::new();
    for doc in history.accounts.values() {
        if let Ok(value) = canonical(doc) {
            snapshot.insert(account_key(doc), value);
        }
    }
    for doc in history.effects.iter().flatten() {
        if let Ok(value) = canonical(doc) {
            snapshot.insert(transaction_key(doc), value);
        }
    }
    snapshot
}

fn canonical<T: Serialize>(doc: &T) -> anyhow::Result<Value> {
    serde_json::to_value(doc).context("encoding a document")
}

/// Every document of `index` (an alias), typed.
async fn scroll_all<T: DeserializeOwned>(
    client: &Elasticsearch,
    index: &str,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    let body = json!({ "size": PAGE, "sort": ["_doc"] });
    let path = format!("/{index}/_search?scroll={KEEP_ALIVE}");
    let mut page = send(client, Method::Post, &path, Some(body)).await?;
    let mut scroll_id = page["_scroll_id"].as_str().map(str::to_owned);
    loop {
        let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            break;
        }
        for hit in hits {
            let id = hit["_id"].as_str().unwrap_or("?").to_owned();
            let doc: T = serde_json::from_value(hit["_source"].clone())
                .with_context(|| format!("document {id} of {index} is not one of ours"))?;
            out.push(doc);
        }
        let Some(id) = scroll_id.clone() else { break };
        page = send(
            client,
            Method::Post,
            "/_search/scroll",
            Some(json!({ "scroll": KEEP_ALIVE, "scroll_id": id })),
        )
        .await?;
        scroll_id = page["_scroll_id"].as_str().map(str::to_owned).or(scroll_id);
    }
    if let Some(id) = scroll_id {
        // Frees the engine's context now rather than after the keep-alive; best effort.
        let _ = send(
            client,
            Method::Delete,
            "/_search/scroll",
            Some(json!({ "scroll_id": [id] })),
        )
        .await;
    }
    Ok(out)
}

async fn send(
    client: &Elasticsearch,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let body = body.map(elasticsearch::http::request::JsonBody::new);
    let response = client
        .send(
            method,
            path,
            elasticsearch::http::headers::HeaderMap::new(),
            Option::<&()>::None,
            body,
            None,
        )
        .await;
    // The sink's reading of an answer: status and JSON (or the text of a non-JSON body).
    let (status, value) = crate::sink::read(response)
        .await
        .with_context(|| format!("{path} on elasticsearch"))?;
    if !(200..300).contains(&status) {
        bail!(
            "{path} answered {status}: {}",
            crate::sink::describe(&value["error"])
        );
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use prism_events::event::{AccountOpened, MoneyDeposited};
    use prism_events::{AccountEvent, AccountId, Country, Currency};
    use uuid::Uuid;

    use super::*;

    fn event(account: u128, version: u64, event: AccountEvent) -> Envelope {
        Envelope {
            id: Uuid::from_u128(account * 1_000 + u128::from(version)),
            source: "/prism/command".into(),
            account_id: AccountId(Uuid::from_u128(account)),
            time: Utc::now(),
            account_version: version,
            correlation_id: None,
            causation_id: None,
            event,
        }
    }

    fn opened() -> AccountEvent {
        AccountEvent::AccountOpened(AccountOpened {
            holder_name: "Zoë Müller".into(),
            email: "zoe@example.org".into(),
            country: Country::parse("DE").expect("DE"),
            currency: Currency::parse("EUR").expect("EUR"),
            daily_withdrawal_limit_minor: 50_000,
        })
    }

    fn deposited(amount_minor: i64) -> AccountEvent {
        AccountEvent::MoneyDeposited(MoneyDeposited {
            amount_minor,
            description: None,
        })
    }

    #[test]
    fn the_expected_model_has_each_account_once_and_each_money_event_once() {
        let snapshot = expected(vec![
            event(1, 1, opened()),
            event(2, 1, opened()),
            event(1, 2, deposited(70)),
            event(1, 2, deposited(70)),
            event(1, 3, deposited(5)),
        ]);
        let keys: Vec<&str> = snapshot.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        let account = &snapshot[&format!("accounts/{}", Uuid::from_u128(1))];
        assert_eq!(account["balance_minor"], 75, "the duplicate is folded once");
        assert_eq!(account["version"], 3);
        assert!(snapshot.contains_key(&format!("transactions/{}", Uuid::from_u128(1_002))));
    }
}
