//! The audit log: one item per event under `AUDIT#{org}`, sorted by time.

use cmk_core::error::StoreError;
use cmk_core::model::{AuditEvent, OrgId};

use super::codec::{event_from, event_item, s};
use super::error::sdk_err;
use super::schema::audit_pk;
use super::store::DynamoStore;

impl DynamoStore {
    pub(super) async fn put_audit_events(
        &self,
        org: &OrgId,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        for e in events {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(event_item(org, e)))
                .send()
                .await
                .map_err(sdk_err)?;
        }
        Ok(())
    }

    pub(super) async fn query_audit(
        &self,
        org: &OrgId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<AuditEvent>, Option<String>), StoreError> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(audit_pk(org)))
            .scan_index_forward(false)
            .limit(limit as i32 + 1);
        query = match cursor {
            Some(c) => query
                .key_condition_expression("pk = :pk AND sk < :c")
                .expression_attribute_values(":c", s(c)),
            None => query.key_condition_expression("pk = :pk"),
        };
        let out = query.send().await.map_err(sdk_err)?;
        let mut events: Vec<AuditEvent> = out
            .items
            .unwrap_or_default()
            .iter()
            .map(event_from)
            .collect::<Result<_, _>>()?;
        let next = if events.len() > limit {
            events.truncate(limit);
            events.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok((events, next))
    }
}
