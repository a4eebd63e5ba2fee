//! SDK errors as store errors, and what a cancelled transaction's reasons say.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use cmk_core::error::StoreError;

use crate::describe;

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

pub(super) fn sdk_err<E>(e: SdkError<E>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match crate::error_code(&e) {
        Some("ConditionalCheckFailedException" | "TransactionCanceledException") => {
            StoreError::Conflict(describe(&e))
        }
        _ => StoreError::Unavailable(describe(&e)),
    }
}

/// A request builder's refusal (a required field left out): our bug, not corrupt data.
pub(super) fn build<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Unavailable(format!("cannot build a DynamoDB request: {e}")))
}

/// Which items of a cancelled transaction failed their condition.
pub(super) fn failed_conditions(e: &SdkError<TransactWriteItemsError>) -> Option<Vec<bool>> {
    let SdkError::ServiceError(se) = e else {
        return None;
    };
    let TransactWriteItemsError::TransactionCanceledException(tc) = se.err() else {
        return None;
    };
    let reasons = tc.cancellation_reasons();
    if reasons.is_empty() {
        return None;
    }
    Some(
        reasons
            .iter()
            .map(|r| r.code() == Some("ConditionalCheckFailed"))
            .collect(),
    )
}

/// Whether a transaction was cancelled because a concurrent one held one of its items.
pub(super) fn collided(e: &SdkError<TransactWriteItemsError>) -> bool {
    let SdkError::ServiceError(se) = e else {
        return false;
    };
    let TransactWriteItemsError::TransactionCanceledException(tc) = se.err() else {
        return false;
    };
    tc.cancellation_reasons()
        .iter()
        .any(|r| r.code() == Some("TransactionConflict"))
}
