//! [`DynamoStore`] and its plumbing: reads, prefix queries and transactions (with their
//! `ClientRequestToken` and the retry of a transaction that collided), which every part of the
//! store uses.

use std::time::Duration;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use cmk_core::error::StoreError;
use cmk_core::model::OrgId;
use rand::Rng;

use super::codec::{n, s, Item};
use super::error::{build, failed_conditions, sdk_err};
use super::schema::org_pk;

/// Tries of a transaction that collides with concurrent ones on the same items.
pub(super) const TRANSACTION_ATTEMPTS: u32 = 8;

/// The pause before trying again a transaction that collided for the `attempt`-th time:
/// exponential from 20 ms, with jitter so that the colliding callers spread out.
pub(super) async fn collision_backoff(attempt: u32) {
    let jitter = rand::thread_rng().gen_range(0..20u64);
    tokio::time::sleep(Duration::from_millis((10 << attempt.min(6)) + jitter)).await;
}

/// The `ClientRequestToken` of one transaction: a hash of its items, then a nonce of this call.
/// The SDK sends the same input on each of its retries, so when a transaction succeeded but its
/// answer was lost, DynamoDB recognises the retry (for 10 minutes) and answers success, instead
/// of the retry failing its own conditions and reading as a lost race (an `add` answering 409
/// `name_taken` for the admin's own new key). Our own retries, which follow a definite failure,
/// are new calls with new tokens.
pub fn request_token(items: &[TransactWriteItem]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{items:?}").hash(&mut hasher);
    format!("{:016x}{:016x}", hasher.finish(), rand::random::<u64>())
}

/// The DynamoDB store over one table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    pub(super) client: Client,
    pub(super) table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub(super) async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(out.item)
    }

    /// Every item of `pk` whose sort key starts with `prefix` (consistent, all pages).
    pub(super) async fn query_prefix(
        &self,
        pk: String,
        prefix: &str,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":pk", s(pk.clone()))
                .expression_attribute_values(":p", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_err)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    pub(super) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<(), SdkError<TransactWriteItemsError>> {
        let token = request_token(&items);
        self.client
            .transact_write_items()
            .client_request_token(token)
            .set_transact_items(Some(items))
            .send()
            .await
            .map(|_| ())
    }

    /// `n += delta` on one counter shard.
    pub(super) fn counter_update(
        &self,
        org: &OrgId,
        count_sk: String,
        delta: i64,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .update(build(
                Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(org_pk(org)))
                    .key("sk", s(count_sk))
                    .update_expression("ADD #n :d")
                    .expression_attribute_names("#n", "n")
                    .expression_attribute_values(":d", n(delta))
                    .build(),
            )?)
            .build())
    }

    /// Runs a small transaction whose lost conditions mean "nothing to do". Transactions that
    /// collide with a concurrent one on the same items are tried again; only a condition that
    /// failed is taken as an answer, never a conflict or throttling.
    pub(super) async fn transact_unless_outdated(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let mut attempt = 0u32;
        loop {
            let Err(e) = self.transact(items.clone()).await else {
                return Ok(());
            };
            match failed_conditions(&e) {
                Some(failed) if failed.contains(&true) => return Ok(()),
                Some(_) if attempt + 1 < TRANSACTION_ATTEMPTS => {
                    attempt += 1;
                    collision_backoff(attempt).await;
                }
                _ => return Err(sdk_err(e)),
            }
        }
    }
}
