//! Data keys: inserts under the default key, reads, and enumeration through the index.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, KeysAndAttributes, Put, TransactWriteItem,
};
use cmk_core::error::StoreError;
use cmk_core::model::{DataKeyId, DataKeyRecord, JobId, KeyId, OrgId};

use super::codec::{count_sums, data_key_from, get_s, n, s, ts};
use super::error::{build, failed_conditions, sdk_err};
use super::schema::{
    count_sk, dk_pk, gsi1pk, org_pk, partition_of, random_shard, BY_WRAPPING_KEY, COUNT_PREFIX,
    DK_SK, HEAD, MOVED_BY, MOVES_PER_TRANSACTION,
};
use super::store::DynamoStore;

impl DynamoStore {
    pub(super) async fn put_data_keys(
        &self,
        org: &OrgId,
        keys: &[DataKeyRecord],
    ) -> Result<(), StoreError> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        if keys.iter().any(|k| k.key_id != first.key_id) {
            return Err(StoreError::Conflict(
                "data keys of one insert must share their wrapping key".into(),
            ));
        }
        for chunk in keys.chunks(MOVES_PER_TRANSACTION) {
            // The wrapping key must still be the default (an org without a head defaults to the
            // service key).
            let mut check = ConditionCheck::builder()
                .table_name(&self.table)
                .key("pk", s(org_pk(org)))
                .key("sk", s(HEAD))
                .expression_attribute_values(":k", s(first.key_id.as_str()));
            check = if first.key_id.is_service() {
                check.condition_expression("attribute_not_exists(pk) OR #def = :k")
            } else {
                check.condition_expression("#def = :k")
            };
            check = check.expression_attribute_names("#def", "default_key_id");
            let mut items = vec![
                TransactWriteItem::builder()
                    .condition_check(build(check.build())?)
                    .build(),
                self.counter_update(
                    org,
                    count_sk(&first.key_id, random_shard()),
                    chunk.len() as i64,
                )?,
            ];
            for k in chunk {
                items.push(
                    TransactWriteItem::builder()
                        .put(build(
                            Put::builder()
                                .table_name(&self.table)
                                .item("pk", s(dk_pk(org, &k.id)))
                                .item("sk", s(DK_SK))
                                .item("org", s(org.as_str()))
                                .item("id", s(k.id.as_str()))
                                .item("key_id", s(k.key_id.as_str()))
                                .item("wrapped", AttributeValue::B(Blob::new(k.wrapped.clone())))
                                .item("version", n(k.version))
                                .item("created_at", s(ts(&k.created_at)))
                                .item("gsi1pk", s(gsi1pk(org, &k.key_id, partition_of(&k.id))))
                                .item("gsi1sk", s(k.id.as_str()))
                                .condition_expression("attribute_not_exists(pk)")
                                .build(),
                        )?)
                        .build(),
                );
            }
            self.transact(items)
                .await
                .map_err(|e| match failed_conditions(&e) {
                    Some(_) => StoreError::Conflict(format!(
                        "key {} is no longer the default",
                        first.key_id
                    )),
                    None => sdk_err(e),
                })?;
        }
        Ok(())
    }

    pub(super) async fn read_data_key(
        &self,
        org: &OrgId,
        id: &DataKeyId,
    ) -> Result<Option<DataKeyRecord>, StoreError> {
        self.get(dk_pk(org, id), DK_SK)
            .await?
            .map(|i| data_key_from(&i))
            .transpose()
    }

    /// Up to `limit` data keys of `key` in the range, read from the table. The index names
    /// candidates (eventually consistent) and the table says what is true now, so candidates
    /// that moved away, or that `not_moved_by` moved, are dropped, and further index pages are
    /// read until `limit` are found or the range ends: a short page means the range is done.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn query_data_keys(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        until: Option<&DataKeyId>,
        limit: usize,
        not_moved_by: Option<&JobId>,
    ) -> Result<Vec<DataKeyRecord>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(1_000));
        let mut cursor = after.cloned();
        loop {
            let ids = self
                .index_ids(org, key, partition, cursor.as_ref(), until, limit)
                .await?;
            let Some(last) = ids.last().cloned() else {
                break;
            };
            let exhausted = ids.len() < limit;
            self.read_candidates(org, key, &ids, not_moved_by, &mut out)
                .await?;
            if out.len() >= limit || exhausted {
                break;
            }
            cursor = Some(last);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.truncate(limit);
        Ok(out)
    }

    /// Reads `ids` from the table (consistently) into `out`: those still wrapped by `key` and
    /// not moved by `not_moved_by`.
    async fn read_candidates(
        &self,
        org: &OrgId,
        key: &KeyId,
        ids: &[DataKeyId],
        not_moved_by: Option<&JobId>,
        out: &mut Vec<DataKeyRecord>,
    ) -> Result<(), StoreError> {
        for chunk in ids.chunks(100) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for id in chunk {
                request = request.keys(HashMap::from([
                    ("pk".to_owned(), s(dk_pk(org, id))),
                    ("sk".to_owned(), s(DK_SK)),
                ]));
            }
            let mut pending = Some(HashMap::from([(
                self.table.clone(),
                build(request.build())?,
            )]));
            while let Some(req) = pending.take().filter(|r| !r.is_empty()) {
                let resp = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(req))
                    .send()
                    .await
                    .map_err(sdk_err)?;
                for item in resp
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    let moved_by_job = not_moved_by.is_some_and(|job| {
                        matches!(item.get(MOVED_BY), Some(AttributeValue::S(m)) if m == job.as_str())
                    });
                    let record = data_key_from(&item)?;
                    if &record.key_id == key && !moved_by_job {
                        out.push(record);
                    }
                }
                pending = resp.unprocessed_keys;
            }
        }
        Ok(())
    }

    pub(super) async fn query_data_key_ids(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        limit: usize,
    ) -> Result<Vec<DataKeyId>, StoreError> {
        self.index_ids(org, key, partition, after, None, limit)
            .await
    }

    pub(super) async fn counts(&self, org: &OrgId) -> Result<HashMap<KeyId, u64>, StoreError> {
        count_sums(&self.query_prefix(org_pk(org), COUNT_PREFIX).await?)
    }

    /// Data key ids of one index partition in `(after, until]`, in id order.
    pub(super) async fn index_ids(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        until: Option<&DataKeyId>,
        limit: usize,
    ) -> Result<Vec<DataKeyId>, StoreError> {
        let mut ids = Vec::new();
        let mut start = None;
        let after_s = after.map(|a| a.to_string());
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_WRAPPING_KEY)
                .expression_attribute_values(":pk", s(gsi1pk(org, key, partition)))
                .limit((limit - ids.len()).min(1000) as i32 + 1)
                .set_exclusive_start_key(start);
            // Key values cannot be empty strings, so each bound is added only when present.
            q = match (&after_s, until) {
                (Some(a), Some(u)) => q
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk BETWEEN :a AND :u")
                    .expression_attribute_values(":a", s(a.clone()))
                    .expression_attribute_values(":u", s(u.as_str())),
                (Some(a), None) => q
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk > :a")
                    .expression_attribute_values(":a", s(a.clone())),
                (None, Some(u)) => q
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk <= :u")
                    .expression_attribute_values(":u", s(u.as_str())),
                (None, None) => q.key_condition_expression("gsi1pk = :pk"),
            };
            let out = q.send().await.map_err(sdk_err)?;
            for item in out.items.unwrap_or_default() {
                let id = get_s(&item, "gsi1sk")?;
                if Some(id) != after_s.as_deref() && ids.len() < limit {
                    ids.push(DataKeyId::from_trusted(id));
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() && ids.len() < limit => start = Some(k),
                _ => return Ok(ids),
            }
        }
    }
}
