//! The customer's setup kit: a CloudFormation template for the customer's own account that
//! creates what a key needs, in either trust mode: the IAM OIDC identity provider (`oidc`), the
//! role with the right trust policy, and either a new KMS key whose key policy lets the role
//! use it or a policy that lets the role use an existing key (the `KeyArn` parameter). Its
//! outputs `RoleArn` and `KeyArn` are what `POST keys` takes. Pure: it builds a document from
//! the org's setup values, so what the page, the CLI and the tests get is the same.

use serde_json::{json, Map, Value};

use crate::model::{OrgId, TrustMode};

/// The KMS actions a customer's key must allow the role, only with the org's context.
pub const KEY_ACTIONS: [&str; 5] = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:DescribeKey",
];

/// What the template is built from.
#[derive(Clone, Debug)]
pub struct KitInput<'a> {
    pub org: &'a OrgId,
    pub trust: TrustMode,
    /// Make a new KMS key (else the template takes an existing key's ARN).
    pub create_key: bool,
    /// `oidc`: the issuer URL.
    pub issuer: Option<&'a str>,
    /// `external_id`: the org's external id and the service principals the role trusts.
    pub external_id: &'a str,
    pub service_principals: &'a [&'a str],
}

/// The CloudFormation template, as JSON (which is YAML too).
pub fn cloudformation(input: &KitInput<'_>) -> Value {
    let org = input.org.as_str();
    let context = json!({"StringEquals": {"kms:EncryptionContext:org": org}});
    let mut parameters = Map::new();
    parameters.insert(
        "RoleName".into(),
        json!({"Type": "String", "Default": format!("cmk-access-{org}"),
               "Description": "The name of the role the service assumes"}),
    );
    let mut resources = Map::new();
    let trust_statement = match (input.trust, input.issuer) {
        (TrustMode::Oidc, Some(issuer)) => {
            let provider = crate::oidc::provider_name(issuer);
            resources.insert(
                "OidcProvider".into(),
                json!({"Type": "AWS::IAM::OIDCProvider", "Properties": {
                    "Url": issuer,
                    "ClientIdList": [crate::oidc::audience(input.org)],
                }}),
            );
            json!({
                "Effect": "Allow",
                "Principal": {"Federated": {"Ref": "OidcProvider"}},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {"StringEquals": {
                    format!("{provider}:aud"): crate::oidc::audience(input.org),
                    format!("{provider}:sub"): crate::oidc::subject(input.org),
                }}
            })
        }
        _ => {
            let principals = match input.service_principals {
                [one] => json!(one),
                many => json!(many),
            };
            json!({
                "Effect": "Allow",
                "Principal": {"AWS": principals},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": input.external_id}}
            })
        }
    };
    let mut role = json!({"Type": "AWS::IAM::Role", "Properties": {
        "RoleName": {"Ref": "RoleName"},
        "Description": format!("Lets the customer-managed-keys service use a KMS key for org {org}"),
        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [trust_statement]},
    }});
    let key_arn = if input.create_key {
        resources.insert(
            "Key".into(),
            json!({"Type": "AWS::KMS::Key", "Properties": {
                "Description": format!("Customer managed key of org {org} for the customer-managed-keys service"),
                "EnableKeyRotation": true,
                "KeyPolicy": {"Version": "2012-10-17", "Statement": [
                    {"Sid": "AccountAdministersTheKey", "Effect": "Allow",
                     "Principal": {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}},
                     "Action": "kms:*", "Resource": "*"},
                    {"Sid": "AllowCustomerManagedKeysService", "Effect": "Allow",
                     "Principal": {"AWS": {"Fn::GetAtt": ["Role", "Arn"]}},
                     "Action": KEY_ACTIONS, "Resource": "*", "Condition": context},
                ]},
            }}),
        );
        json!({"Fn::GetAtt": ["Key", "Arn"]})
    } else {
        parameters.insert(
            "KeyArn".into(),
            json!({"Type": "String", "AllowedPattern": "^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$",
                   "Description": "The ARN of your existing symmetric KMS key"}),
        );
        role["Properties"]["Policies"] = json!([{
            "PolicyName": "use-the-key",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": KEY_ACTIONS,
                "Resource": {"Ref": "KeyArn"}, "Condition": context,
            }]},
        }]);
        json!({"Ref": "KeyArn"})
    };
    resources.insert("Role".into(), role);
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "Access for the customer-managed-keys service to a KMS key of org {org} ({} trust)",
            input.trust.as_str()
        ),
        "Parameters": parameters,
        "Resources": resources,
        "Outputs": {
            "RoleArn": {"Description": "role_arn for POST keys", "Value": {"Fn::GetAtt": ["Role", "Arn"]}},
            "KeyArn": {"Description": "key_arn for POST keys", "Value": key_arn},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kit(trust: TrustMode, create_key: bool) -> Value {
        cloudformation(&KitInput {
            org: &OrgId::from_trusted("acme"),
            trust,
            create_key,
            issuer: Some("https://api.example.com/oidc"),
            external_id: "ext-123",
            service_principals: &[
                "arn:aws:iam::111122223333:role/a",
                "arn:aws:iam::111122223333:role/b",
            ],
        })
    }

    #[test]
    fn the_oidc_kit_trusts_the_provider_for_the_org_only() {
        let t = kit(TrustMode::Oidc, true);
        let r = &t["Resources"];
        assert_eq!(
            r["OidcProvider"]["Properties"]["ClientIdList"][0],
            "aws:acme"
        );
        let st = &r["Role"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
        assert_eq!(st["Action"], "sts:AssumeRoleWithWebIdentity");
        assert_eq!(
            st["Condition"]["StringEquals"]["api.example.com/oidc:sub"],
            "cmk:org:acme"
        );
        assert_eq!(st["Principal"]["Federated"]["Ref"], "OidcProvider");
        let key_policy = &r["Key"]["Properties"]["KeyPolicy"]["Statement"][1];
        assert_eq!(
            key_policy["Condition"]["StringEquals"]["kms:EncryptionContext:org"],
            "acme"
        );
        assert_eq!(t["Outputs"]["KeyArn"]["Value"]["Fn::GetAtt"][0], "Key");
    }

    #[test]
    fn the_external_id_kit_for_an_existing_key_takes_its_arn() {
        let t = kit(TrustMode::ExternalId, false);
        assert!(t["Resources"].get("OidcProvider").is_none());
        assert!(t["Resources"].get("Key").is_none());
        let role = &t["Resources"]["Role"]["Properties"];
        let st = &role["AssumeRolePolicyDocument"]["Statement"][0];
        assert_eq!(st["Condition"]["StringEquals"]["sts:ExternalId"], "ext-123");
        assert_eq!(
            st["Principal"]["AWS"][1],
            "arn:aws:iam::111122223333:role/b"
        );
        assert_eq!(
            role["Policies"][0]["PolicyDocument"]["Statement"][0]["Resource"]["Ref"],
            "KeyArn"
        );
        assert_eq!(t["Outputs"]["KeyArn"]["Value"]["Ref"], "KeyArn");
        assert!(t["Parameters"]["KeyArn"].is_object());
    }
}
