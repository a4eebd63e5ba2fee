//! AWS adapters of the CMK ports: a DynamoDB [`Store`](cmk_core::ports::Store) (see
//! [`dynamo`] for the table design), an SQS [`RewrapQueue`](cmk_core::ports::RewrapQueue) and an
//! AWS KMS [`KeyProvider`](cmk_core::ports::KeyProvider) that reaches customer keys through STS,
//! and an EventBridge [`EventPublisher`](cmk_core::ports::EventPublisher).

pub mod backend;
pub mod dynamo;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod events;
pub mod kms;
pub mod metrics;
pub mod oidc;
pub mod resources;
pub mod sqs;

pub use backend::{AwsBackend, AwsSettings};
pub use dynamo::DynamoStore;
pub use events::EventBridgePublisher;
pub use kms::{KmsKeyProvider, KmsSettings};
pub use sqs::SqsQueue;

/// The AWS error code of an SDK error, if the service sent one.
pub(crate) fn error_code<E>(e: &aws_sdk_dynamodb::error::SdkError<E>) -> Option<&str>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    e.code()
}

/// A short display of an SDK error that keeps the AWS code and message (the SDK's own `Display`
/// says only "service error", and its debug form dumps the whole response, headers included).
pub(crate) fn describe<E>(e: &aws_sdk_dynamodb::error::SdkError<E>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_owned(),
        _ => match e {
            SdkError::ServiceError(se) => {
                format!("the service answered HTTP {}", se.raw().status().as_u16())
            }
            SdkError::ResponseError(re) => {
                format!("unreadable answer, HTTP {}", re.raw().status().as_u16())
            }
            SdkError::TimeoutError(_) => "the request timed out".to_owned(),
            SdkError::DispatchFailure(d) if d.is_io() => {
                "the service could not be reached".to_owned()
            }
            SdkError::DispatchFailure(_) => "the request could not be sent".to_owned(),
            SdkError::ConstructionFailure(_) => "the request could not be built".to_owned(),
            _ => "unknown AWS SDK error".to_owned(),
        },
    }
}
