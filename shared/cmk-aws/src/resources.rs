//! The table and queues the service needs, defined once: `cmk serve --backend aws
//! --create-resources` and the tests create them from here, and a test checks `template.yaml`
//! declares the same.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::describe;
use crate::dynamo::{BY_WRAPPING_KEY, KEYS_BY_CHECK, RUNNING_JOBS};

/// Deliveries of a rewrap message before it goes to the dead-letter queue.
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// The worker Lambda's timeout; the queue's visibility timeout is six times it.
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(60);

/// The table's key attributes and indexes: `(index, partition key, sort key)`.
pub const TABLE_KEYS: [(&str, &str, &str); 4] = [
    ("", "pk", "sk"),
    (BY_WRAPPING_KEY, "gsi1pk", "gsi1sk"),
    (RUNNING_JOBS, "gsi2pk", "gsi2sk"),
    (KEYS_BY_CHECK, "gsi3pk", "gsi3sk"),
];

fn schema(pk: &str, sk: &str) -> Result<Vec<KeySchemaElement>, String> {
    Ok(vec![
        KeySchemaElement::builder()
            .attribute_name(pk)
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| e.to_string())?,
        KeySchemaElement::builder()
            .attribute_name(sk)
            .key_type(KeyType::Range)
            .build()
            .map_err(|e| e.to_string())?,
    ])
}

/// Creates the table if it does not exist and waits until it is active.
pub async fn ensure_table(client: &aws_sdk_dynamodb::Client, name: &str) -> Result<(), String> {
    if client
        .describe_table()
        .table_name(name)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    let mut create = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest);
    for (index, pk, sk) in TABLE_KEYS {
        for attr in [pk, sk] {
            create = create.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        if index.is_empty() {
            create = create.set_key_schema(Some(schema(pk, sk)?));
        } else {
            create = create.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(index)
                    .set_key_schema(Some(schema(pk, sk)?))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    create.send().await.map_err(|e| describe(&e))?;
    for _ in 0..60 {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if out
            .table()
            .and_then(|t| t.table_status())
            .map(|s| s.as_str())
            == Some("ACTIVE")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("table {name} did not become active"))
}

/// Creates the rewrap queue and its dead-letter queue if missing; returns the queue's URL.
pub async fn ensure_queues(client: &aws_sdk_sqs::Client, name: &str) -> Result<String, String> {
    let dlq_name = format!("{name}-dlq");
    let dlq_url = client
        .create_queue()
        .queue_name(&dlq_name)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| describe(&e))?
        .queue_url
        .ok_or("no dead-letter queue URL")?;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| describe(&e))?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or("no dead-letter queue ARN")?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": MAX_RECEIVE_COUNT,
    })
    .to_string();
    let attributes = HashMap::from([
        (
            QueueAttributeName::VisibilityTimeout,
            (WORKER_TIMEOUT.as_secs() * 6).to_string(),
        ),
        (QueueAttributeName::RedrivePolicy, redrive),
    ]);
    client
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes))
        .send()
        .await
        .map_err(|e| describe(&e))?
        .queue_url
        .ok_or_else(|| "no queue URL".to_owned())
}
