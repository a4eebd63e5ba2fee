//! The integration suites of `cmk-lambda`, in one test binary (one link of the AWS SDK instead
//! of one per suite). Each module opens with what it proves.

mod common;
mod handlers;
mod least_privilege;
mod template;
