//! The copies (blue/green) of the search read model.
//!
//! Copy `N` is three indices (`<prefix>-transactions-g<N>`, `-accounts-g<N>`,
//! `-checkpoints-g<N>`, see [`crate::index`]). The **live** copy is the one the aliases
//! `<prefix>-transactions` and `<prefix>-accounts` point at: the query API searches the
//! aliases, and the projector asks [`SearchCopies::live_number`], which reads the same
//! alias, so queries and writers switch together in the one atomic `_aliases` request of
//! [`SearchCopies::promote`] (remove from the old copy + add to the new, for both aliases).
//!
//! The control index `<prefix>-control` records each copy (`copy-<n>`: number, state
//! `building | live | retired`, created_at, live_since) and each running instance
//! (`instance-<hash>`: instance, writing, can_open, error, seen_at). A copy's number is
//! handed out by creating its control document (`op_type=create`: a racing creator gets a
//! 409 and takes the next number). Control writes refresh at once (they are few and tiny),
//! so the next search of the control index sees them. Where the control documents and the
//! alias disagree (a crash between the swap and the control update), the alias wins.
//!
//! The lead's `Copies` trait is a thin layer over these inherent methods.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use chrono::{DateTime, Utc};
use elasticsearch::cluster::ClusterHealthParts;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesDeleteParts, IndicesExistsParts, IndicesGetAliasParts,
    IndicesGetParts,
};
use elasticsearch::params::{Level, OpType, Refresh};
use elasticsearch::{DeleteParts, Elasticsearch, IndexParts, SearchParts};
use prism_platform::config::ElasticsearchConfig;
use prism_projector::copies::{CopyInfo, CopyState, InstanceReport, InstanceRow, PartitionStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::SearchConfig;
use crate::index::{self, Names};
use crate::sink::{checkpoints, describe, read};

/// Most control documents read at once (copies and instances are a handful).
const CONTROL_MAX: usize = 1_000;
/// Width kept of an instance's error.
const INSTANCE_ERROR_MAX: usize = 2_000;
/// Longest an instance waits for the shards of an index another instance is creating.
const PRIMARIES_WAIT: Duration = Duration::from_secs(30);

/// One opened copy: what the sink writes and the query API reads.
#[derive(Debug, Clone)]
pub struct SearchCopy {
    pub number: u32,
    pub transactions_index: String,
    pub accounts_index: String,
    pub checkpoints_index: String,
    pub client: Elasticsearch,
    /// Largest `_bulk` body the sink sends (`[search] bulk_max_bytes`).
    pub bulk_max_bytes: usize,
    /// Most account documents the sink remembers between batches
    /// (`[search] account_cache_max`).
    pub account_cache_max: usize,
}

/// A copy's control document (`copy-<n>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CopyDoc {
    kind: String,
    number: u32,
    state: String,
    created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    live_since: Option<DateTime<Utc>>,
}

/// An instance's control document (`instance-<hash>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceDoc {
    kind: String,
    instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writing: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    can_open: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    seen_at: DateTime<Utc>,
}

/// The search read model's copies. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SearchCopies {
    client: Elasticsearch,
    config: SearchConfig,
    names: Names,
}

fn copy_doc_id(number: u32) -> String {
    format!("copy-{number}")
}

/// Instance names hold `/`; a digest keeps the document id plain.
fn instance_doc_id(instance: &str) -> String {
    let digest = Sha256::digest(instance.as_bytes());
    format!("instance-{}", &hex::encode(digest)[..32])
}

/// The copy number in an index name `<prefix>-<kind>-g<N>`.
fn copy_number(index: &str) -> Option<u32> {
    index.rsplit_once("-g").and_then(|(_, n)| n.parse().ok())
}

impl SearchCopies {
    /// Connects to the engine of `es` and creates the control index if missing.
    pub async fn connect(es: &ElasticsearchConfig, config: &SearchConfig) -> anyhow::Result<Self> {
        let client = prism_platform::clients::elasticsearch(es)?;
        Self::new(client, config).await
    }

    /// Over an existing client; creates the control index if missing.
    pub async fn new(client: Elasticsearch, config: &SearchConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let copies = Self {
            client,
            config: config.clone(),
            names: Names::new(&config.index_prefix),
        };
        let control = copies.names.control_index();
        copies
            .create_index(&control, index::control_index_body(config))
            .await?;
        Ok(copies)
    }

    /// Whether the search model has ever run (its control index exists), creating nothing.
    pub async fn exists(es: &ElasticsearchConfig, config: &SearchConfig) -> anyhow::Result<bool> {
        config.validate()?;
        let client = prism_platform::clients::elasticsearch(es)?;
        let control = Names::new(&config.index_prefix).control_index();
        index_exists(&client, &control).await
    }

    /// The same copies through another client: a client's connections belong to the
    /// tokio runtime that made them, so work on another runtime (a cleanup from a
    /// synchronous `Drop`) needs its own.
    pub fn with_client(&self, client: Elasticsearch) -> Self {
        Self {
            client,
            config: self.config.clone(),
            names: self.names.clone(),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn client(&self) -> &Elasticsearch {
        &self.client
    }

    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    /// The live copy; on first start (no copy at all) creates copy 1, registers it live
    /// and points the aliases at it. Two instances racing both create (idempotent), one
    /// registration wins.
    pub async fn live(&self) -> anyhow::Result<SearchCopy> {
        if let Some(number) = self.live_number().await? {
            return self.open(number).await;
        }
        let docs = self.copy_docs().await?;
        // A copy recorded live without its aliases: a first start (or a promotion) died
        // between the control write and the alias swap. Finish it.
        let recorded = docs
            .values()
            .filter(|d| d.state == CopyState::Live.as_str())
            .map(|d| d.number)
            .max();
        if let Some(number) = recorded {
            tracing::warn!(
                copy = number,
                "the live copy had no aliases; pointing them at it"
            );
            self.create_indices(number).await?;
            self.swap_aliases(None, number).await?;
            return self.open(number).await;
        }
        if !docs.is_empty() {
            bail!(
                "{} has copies but none is live: promote one (prismctl rebuild search)",
                self.names.control_index()
            );
        }
        self.create_indices(1).await?;
        let now = Utc::now();
        let doc = CopyDoc {
            kind: "copy".into(),
            number: 1,
            state: CopyState::Live.as_str().into(),
            created_at: now,
            live_since: Some(now),
        };
        // A 409: another instance registered it first, which is as good.
        self.put_control(&copy_doc_id(1), &doc, true).await?;
        self.swap_aliases(None, 1).await?;
        match self.live_number().await? {
            Some(number) => self.open(number).await,
            None => Err(anyhow!("copy 1 was created but its aliases are missing")),
        }
    }

    /// Which copy is live: the one the transactions alias points at (`None`: no alias).
    pub async fn live_number(&self) -> anyhow::Result<Option<u32>> {
        let alias = self.names.transactions_alias();
        let indices = self.alias_indices(&alias).await?;
        let mut numbers: Vec<u32> = indices.iter().filter_map(|i| copy_number(i)).collect();
        numbers.sort_unstable();
        numbers.dedup();
        match numbers.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            many => bail!("alias {alias} points at several copies: {many:?}"),
        }
    }

    /// Opens registered copy `number`: creates any of its indices that is missing.
    pub async fn open(&self, number: u32) -> anyhow::Result<SearchCopy> {
        let docs = self.copy_docs().await?;
        if !docs.contains_key(&number) {
            bail!(
                "copy {number} does not exist in {}",
                self.names.control_index()
            );
        }
        self.create_indices(number).await
    }

    /// Creates the next copy, state `building`, empty.
    pub async fn create_next(&self) -> anyhow::Result<SearchCopy> {
        for _ in 0..5 {
            let max = self.copy_docs().await?.keys().max().copied().unwrap_or(0);
            let number = max
                .checked_add(1)
                .ok_or_else(|| anyhow!("no copy number left"))?;
            let doc = CopyDoc {
                kind: "copy".into(),
                number,
                state: CopyState::Building.as_str().into(),
                created_at: Utc::now(),
                live_since: None,
            };
            if !self.put_control(&copy_doc_id(number), &doc, true).await? {
                continue; // Another creator took this number.
            }
            return match self.create_indices(number).await {
                Ok(copy) => Ok(copy),
                Err(e) => {
                    // Best effort: leave no registration for indices that were not made.
                    let _ = self.delete_control(&copy_doc_id(number)).await;
                    Err(e)
                }
            };
        }
        bail!("could not register a new copy: others kept taking the next number")
    }

    /// Makes building copy `number` live and retires the live one: both aliases move in
    /// one `_aliases` request, then the control documents follow. Promoting the live copy
    /// does nothing.
    pub async fn promote(&self, number: u32) -> anyhow::Result<()> {
        let docs = self.copy_docs().await?;
        let Some(target) = docs.get(&number) else {
            bail!("copy {number} does not exist");
        };
        let live = self.live_number().await?;
        if live == Some(number) {
            return Ok(());
        }
        if target.state != CopyState::Building.as_str() {
            bail!(
                "copy {number} is {}, only a building copy can be promoted",
                target.state
            );
        }
        self.swap_aliases(live, number).await?;
        let now = Utc::now();
        let mut promoted = target.clone();
        promoted.state = CopyState::Live.as_str().into();
        promoted.live_since = Some(now);
        self.put_control(&copy_doc_id(number), &promoted, false)
            .await?;
        for (n, doc) in &docs {
            if *n != number && doc.state == CopyState::Live.as_str() {
                let mut retired = doc.clone();
                retired.state = CopyState::Retired.as_str().into();
                self.put_control(&copy_doc_id(*n), &retired, false).await?;
            }
        }
        Ok(())
    }

    /// Drops building copy `number` (a rebuild that failed or was refused). Refuses any
    /// other state, so the live copy can never be dropped this way.
    pub async fn abandon(&self, number: u32) -> anyhow::Result<()> {
        let docs = self.copy_docs().await?;
        let building = docs
            .get(&number)
            .is_some_and(|d| d.state == CopyState::Building.as_str());
        if !building || self.live_number().await? == Some(number) {
            bail!("copy {number} is not being built; not dropping it");
        }
        self.delete_indices(number).await?;
        self.delete_control(&copy_doc_id(number)).await
    }

    /// The newest `building` copy, if any.
    pub async fn newest_building(&self) -> anyhow::Result<Option<u32>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|c| c.state == CopyState::Building)
            .map(|c| c.number)
            .max())
    }

    /// Every copy, oldest first. `name` is the copy's transactions index. The state comes
    /// from the control documents, corrected by the alias (see the module docs).
    pub async fn list(&self) -> anyhow::Result<Vec<CopyInfo>> {
        let live = self.live_number().await?;
        let docs = self.copy_docs().await?;
        let mut copies = Vec::with_capacity(docs.len());
        for (number, doc) in docs {
            let stored = CopyState::parse(&doc.state)
                .ok_or_else(|| anyhow!("copy {number} has an unknown state {:?}", doc.state))?;
            let state = match (live == Some(number), stored) {
                (true, _) => CopyState::Live,
                (false, CopyState::Live) => CopyState::Retired,
                (false, other) => other,
            };
            copies.push(CopyInfo {
                number,
                name: self.names.transactions_index(number),
                state,
                created_at: doc.created_at,
                live_since: doc.live_since,
            });
        }
        Ok(copies)
    }

    /// Deletes every retired copy's indices and control document; returns the indices.
    pub async fn drop_retired(&self) -> anyhow::Result<Vec<String>> {
        let mut dropped = Vec::new();
        for copy in self.list().await? {
            if copy.state != CopyState::Retired {
                continue;
            }
            dropped.extend(self.delete_indices(copy.number).await?);
            self.delete_control(&copy_doc_id(copy.number)).await?;
        }
        Ok(dropped)
    }

    /// Records (upserts) what an instance says about itself, with the current time.
    pub async fn report_instance(&self, report: &InstanceReport) -> anyhow::Result<()> {
        let doc = InstanceDoc {
            kind: "instance".into(),
            instance: report.instance.clone(),
            writing: report.writing,
            can_open: report.can_open,
            error: report
                .error
                .as_deref()
                .map(|e| prism_projector::checkpoint::clip(e, INSTANCE_ERROR_MAX)),
            seen_at: Utc::now(),
        };
        self.put_control(&instance_doc_id(&report.instance), &doc, false)
            .await
            .map(|_| ())
    }

    /// Removes an instance's document (it stops).
    pub async fn forget_instance(&self, instance: &str) -> anyhow::Result<()> {
        self.delete_control(&instance_doc_id(instance)).await
    }

    /// Instances seen within `within`.
    pub async fn instances(&self, within: Duration) -> anyhow::Result<Vec<InstanceRow>> {
        let since = Utc::now()
            - chrono::Duration::from_std(within).context("instance window out of range")?;
        let hits = self
            .search_control(json!({ "bool": { "filter": [
                { "term": { "kind": "instance" } },
                { "range": { "seen_at": { "gte": since } } }
            ]}}))
            .await?;
        let mut rows = Vec::with_capacity(hits.len());
        for source in hits {
            let doc: InstanceDoc =
                serde_json::from_value(source).context("an instance document")?;
            rows.push(InstanceRow {
                instance: doc.instance,
                writing: doc.writing,
                can_open: doc.can_open,
                error: doc.error,
                seen_at: doc.seen_at,
            });
        }
        rows.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(rows)
    }

    /// The positions stored in `copy`, with their last errors.
    pub async fn partitions(&self, copy: &SearchCopy) -> anyhow::Result<Vec<PartitionStatus>> {
        Ok(checkpoints(copy).statuses().await?)
    }

    /// Deletes every index under the prefix, the control index included (tests, resets).
    /// Names each index (wildcard deletes may be disabled on the cluster).
    pub async fn drop_everything(&self) -> anyhow::Result<()> {
        let pattern = format!("{}-*", self.names.prefix());
        let response = self
            .client
            .indices()
            .get(IndicesGetParts::Index(&[&pattern]))
            .send()
            .await;
        let (status, body) = read(response).await.context("listing indices")?;
        if !(200..300).contains(&status) {
            bail!(
                "listing {pattern}: HTTP {status}: {}",
                describe(&body["error"])
            );
        }
        let names: Vec<String> = body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            self.delete_index(&name).await?;
        }
        Ok(())
    }

    /// The three indices of copy `number`, each created if missing.
    async fn create_indices(&self, number: u32) -> anyhow::Result<SearchCopy> {
        let copy = SearchCopy {
            number,
            transactions_index: self.names.transactions_index(number),
            accounts_index: self.names.accounts_index(number),
            checkpoints_index: self.names.checkpoints_index(number),
            client: self.client.clone(),
            bulk_max_bytes: self.config.bulk_max_bytes,
            account_cache_max: self.config.account_cache_max,
        };
        self.create_index(
            &copy.transactions_index,
            index::transactions_index_body(&self.config),
        )
        .await?;
        self.create_index(
            &copy.accounts_index,
            index::accounts_index_body(&self.config),
        )
        .await?;
        self.create_index(
            &copy.checkpoints_index,
            index::checkpoints_index_body(&self.config),
        )
        .await?;
        Ok(copy)
    }

    /// Creates `name` with `body`; an index that already exists is fine.
    async fn create_index(&self, name: &str, body: Value) -> anyhow::Result<()> {
        let response = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(name))
            .body(body)
            .send()
            .await;
        let (status, answer) = read(response)
            .await
            .with_context(|| format!("creating index {name}"))?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        if answer["error"]["type"] == "resource_already_exists_exception" {
            // Another instance may be creating it right now (instances starting together):
            // its create returns once the primary shards are active, but ours returns at
            // once, and reading it before then fails with "all shards failed".
            return self.wait_for_primaries(name).await;
        }
        bail!(
            "creating index {name}: HTTP {status}: {}",
            describe(&answer["error"])
        )
    }

    /// Waits (up to [`PRIMARIES_WAIT`]) until every primary shard of `name` is active.
    /// (The health status alone does not say it: an index whose primaries are still
    /// initializing right after its creation reports `yellow`.)
    async fn wait_for_primaries(&self, name: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + PRIMARIES_WAIT;
        loop {
            let response = self
                .client
                .cluster()
                .health(ClusterHealthParts::Index(&[name]))
                .level(Level::Indices)
                .send()
                .await;
            let (status, answer) = read(response)
                .await
                .with_context(|| format!("waiting for index {name}'s shards"))?;
            let health = &answer["indices"][name];
            let (shards, active) = (
                health["number_of_shards"].as_u64(),
                health["active_primary_shards"].as_u64(),
            );
            if (200..300).contains(&status) && shards.is_some() && shards == active {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "index {name}'s primary shards are not active after {PRIMARIES_WAIT:?} \
                     (HTTP {status}: {active:?} of {shards:?} active)"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes copy `number`'s indices (missing ones are fine); returns their names.
    async fn delete_indices(&self, number: u32) -> anyhow::Result<Vec<String>> {
        let names = vec![
            self.names.transactions_index(number),
            self.names.accounts_index(number),
            self.names.checkpoints_index(number),
        ];
        for name in &names {
            self.delete_index(name).await?;
        }
        Ok(names)
    }

    async fn delete_index(&self, name: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .indices()
            .delete(IndicesDeleteParts::Index(&[name]))
            .send()
            .await;
        let (status, body) = read(response)
            .await
            .with_context(|| format!("deleting index {name}"))?;
        if (200..300).contains(&status) || status == 404 {
            return Ok(());
        }
        bail!(
            "deleting index {name}: HTTP {status}: {}",
            describe(&body["error"])
        )
    }

    /// The indices `alias` points at (none if the alias does not exist).
    async fn alias_indices(&self, alias: &str) -> anyhow::Result<Vec<String>> {
        let response = self
            .client
            .indices()
            .get_alias(IndicesGetAliasParts::Name(&[alias]))
            .send()
            .await;
        let (status, body) = read(response)
            .await
            .with_context(|| format!("reading alias {alias}"))?;
        if status == 404 {
            return Ok(Vec::new());
        }
        if !(200..300).contains(&status) {
            bail!(
                "reading alias {alias}: HTTP {status}: {}",
                describe(&body["error"])
            );
        }
        Ok(body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Points both aliases at copy `to`, removing them from copy `from` (and from any
    /// other index they are on), in one atomic `_aliases` request.
    async fn swap_aliases(&self, from: Option<u32>, to: u32) -> anyhow::Result<()> {
        let mut actions = Vec::new();
        for (alias, index_of) in [
            (
                self.names.transactions_alias(),
                Names::transactions_index as fn(&Names, u32) -> String,
            ),
            (self.names.accounts_alias(), Names::accounts_index),
        ] {
            let target = index_of(&self.names, to);
            let mut current = self.alias_indices(&alias).await?;
            if let Some(from) = from {
                let old = index_of(&self.names, from);
                if !current.contains(&old) {
                    current.push(old);
                }
            }
            for index in current.iter().filter(|i| **i != target) {
                actions.push(json!({ "remove": { "index": index, "alias": alias } }));
            }
            actions.push(json!({ "add": { "index": target, "alias": alias } }));
        }
        let response = self
            .client
            .indices()
            .update_aliases()
            .body(json!({ "actions": actions }))
            .send()
            .await;
        let (status, body) = read(response)
            .await
            .with_context(|| format!("moving the aliases to copy {to}"))?;
        if !(200..300).contains(&status) {
            bail!(
                "moving the aliases to copy {to}: HTTP {status}: {}",
                describe(&body["error"])
            );
        }
        Ok(())
    }

    /// Every copy's control document, by number.
    async fn copy_docs(&self) -> anyhow::Result<BTreeMap<u32, CopyDoc>> {
        let hits = self
            .search_control(json!({ "term": { "kind": "copy" } }))
            .await?;
        let mut docs = BTreeMap::new();
        for source in hits {
            let doc: CopyDoc = serde_json::from_value(source).context("a copy document")?;
            docs.insert(doc.number, doc);
        }
        Ok(docs)
    }

    async fn search_control(&self, query: Value) -> anyhow::Result<Vec<Value>> {
        let control = self.names.control_index();
        let response = self
            .client
            .search(SearchParts::Index(&[&control]))
            .body(json!({ "size": CONTROL_MAX, "query": query }))
            .send()
            .await;
        let (status, body) = read(response)
            .await
            .with_context(|| format!("reading {control}"))?;
        if !(200..300).contains(&status) {
            bail!(
                "reading {control}: HTTP {status}: {}",
                describe(&body["error"])
            );
        }
        Ok(body["hits"]["hits"]
            .as_array()
            .map(|hits| hits.iter().map(|h| h["_source"].clone()).collect())
            .unwrap_or_default())
    }

    /// Writes a control document, refreshed at once. With `create`, an existing document
    /// is left alone and the answer is `false`.
    async fn put_control<T: Serialize>(
        &self,
        id: &str,
        doc: &T,
        create: bool,
    ) -> anyhow::Result<bool> {
        let control = self.names.control_index();
        let request = self
            .client
            .index(IndexParts::IndexId(&control, id))
            .refresh(Refresh::True)
            .body(doc);
        let request = if create {
            request.op_type(OpType::Create)
        } else {
            request
        };
        let (status, body) = read(request.send().await)
            .await
            .with_context(|| format!("writing {id} in {control}"))?;
        match status {
            200..=299 => Ok(true),
            409 if create => Ok(false),
            _ => bail!(
                "writing {id} in {control}: HTTP {status}: {}",
                describe(&body["error"])
            ),
        }
    }

    async fn delete_control(&self, id: &str) -> anyhow::Result<()> {
        let control = self.names.control_index();
        let response = self
            .client
            .delete(DeleteParts::IndexId(&control, id))
            .refresh(Refresh::True)
            .send()
            .await;
        let (status, body) = read(response)
            .await
            .with_context(|| format!("deleting {id} in {control}"))?;
        if (200..300).contains(&status) || status == 404 {
            return Ok(());
        }
        bail!(
            "deleting {id} in {control}: HTTP {status}: {}",
            describe(&body["error"])
        )
    }
}

async fn index_exists(client: &Elasticsearch, name: &str) -> anyhow::Result<bool> {
    let response = client
        .indices()
        .exists(IndicesExistsParts::Index(&[name]))
        .send()
        .await
        .with_context(|| format!("looking for index {name}"))?;
    match response.status_code().as_u16() {
        200..=299 => Ok(true),
        404 => Ok(false),
        status => bail!("looking for index {name}: HTTP {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_numbers_are_read_from_index_names() {
        assert_eq!(copy_number("prism-search-transactions-g12"), Some(12));
        assert_eq!(copy_number("a-g-b-accounts-g3"), Some(3));
        assert_eq!(copy_number("prism-search-transactions"), None);
    }

    #[test]
    fn instance_document_ids_are_plain_and_stable() {
        let id = instance_doc_id("prism-search/host/42/abc");
        assert_eq!(id, instance_doc_id("prism-search/host/42/abc"));
        assert!(id.starts_with("instance-") && !id.contains('/'));
        assert_ne!(id, instance_doc_id("prism-search/host/43/abc"));
    }
}
