//! One order, from `newOrder` to the PEM chain: arm the responder for each pending
//! authorization, tell the CA to validate, wait for the order to be ready (and, when it turns
//! invalid, find out why from the challenge's own error), finalize with a CSR for a fresh ECDSA
//! P-256 key, and collect the chain. Nothing is written here; the caller installs the result
//! only when all of it arrived.

use std::{net::IpAddr, time::Duration};

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, Identifier, NewOrder, OrderStatus,
    RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

use super::{AcmeError, ChallengeKind, dns::DnsPublisher, responder::Responder};

/// A key and the chain the CA signed for it, not yet on disk.
pub struct Issued {
    pub key_pem: String,
    pub chain_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("key_pem", &"***")
            .finish_non_exhaustive()
    }
}

/// How this order's challenges are answered: served here, or published in DNS.
// One per issuance: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    Serve(Responder),
    Dns(DnsPublisher),
}

impl Answer {
    fn kind(&self) -> ChallengeKind {
        match self {
            Self::Serve(r) => r.kind,
            Self::Dns(_) => ChallengeKind::Dns01,
        }
    }

    /// Stop serving, or remove the records written.
    pub(crate) async fn finish(self) {
        match self {
            Self::Serve(r) => r.stop().await,
            Self::Dns(d) => d.cleanup().await,
        }
    }
}

pub(crate) fn identifier(domain: &str) -> Identifier {
    match domain.parse::<IpAddr>() {
        Ok(ip) => Identifier::Ip(ip),
        Err(_) => Identifier::Dns(domain.to_string()),
    }
}

/// Place the order and see it through. `replaces` names the certificate this one succeeds,
/// when the CA supports renewal information.
pub(crate) async fn order_certificate(
    account: &Account,
    domain: &str,
    answer: &Answer,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued, AcmeError> {
    let ids = [identifier(domain)];
    let mut new_order = NewOrder::new(&ids);
    if let Some(r) = replaces {
        new_order = new_order.replaces(r);
    }
    let mut order = account
        .new_order(&new_order)
        .await
        .map_err(|e| AcmeError::acme("placing the order", e))?;

    let kind = answer.kind();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| AcmeError::acme("fetching the authorization", e))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            // The CA remembers a recent validation of this name for this account.
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::OrderInvalid(format!(
                    "the authorization for {domain} is {status:?}"
                )));
            }
        }
        let name = authz.identifier().to_string();
        let mut challenge =
            authz
                .challenge(kind.acme_type())
                .ok_or_else(|| AcmeError::ChallengeNotOffered {
                    identifier: name.clone(),
                    challenge: kind,
                    other: match kind {
                        ChallengeKind::Http01 => ChallengeKind::TlsAlpn01,
                        ChallengeKind::TlsAlpn01 | ChallengeKind::Dns01 => ChallengeKind::Http01,
                    },
                })?;
        let key_authorization = challenge.key_authorization();
        match answer {
            Answer::Serve(responder) => {
                responder.add(&name, &challenge.token, &key_authorization)?
            }
            Answer::Dns(publisher) => {
                publisher
                    .publish(&name, &key_authorization.dns_value())
                    .await?
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| AcmeError::acme("starting the validation", e))?;
    }

    let validation = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(120));
    match order.poll_ready(&validation).await {
        Ok(OrderStatus::Ready) => {}
        Ok(OrderStatus::Invalid) => return Err(why_invalid(&mut order, kind, None).await),
        // instant-acme reports an order carrying an error as that error: find the cause.
        Err(instant_acme::Error::Api(problem)) => {
            return Err(why_invalid(&mut order, kind, Some(problem)).await);
        }
        Err(e) => return Err(AcmeError::acme("waiting for the validation", e)),
        Ok(other) => {
            return Err(AcmeError::OrderInvalid(format!(
                "the order is {other:?} instead of ready after the validation"
            )));
        }
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![match domain.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(domain.try_into()?),
    }];
    let csr = params.serialize_request(&key)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| AcmeError::acme("finalizing the order", e))?;
    let issuance = RetryPolicy::new().timeout(Duration::from_secs(120));
    let chain_pem = order
        .poll_certificate(&issuance)
        .await
        .map_err(|e| AcmeError::acme("downloading the certificate", e))?;
    Ok(Issued {
        key_pem: key.serialize_pem(),
        chain_pem,
    })
}

/// The most specific reason the CA gives: a challenge's error, else the order's.
async fn why_invalid(
    order: &mut instant_acme::Order,
    kind: ChallengeKind,
    order_problem: Option<instant_acme::Problem>,
) -> AcmeError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        // The order's copy may predate the validation: fetch the authorization again.
        if authz.refresh().await.is_err() {
            continue;
        }
        let identifier = authz.identifier().to_string();
        if let Some(problem) = authz.challenges.iter().find_map(|c| c.error.as_ref()) {
            return AcmeError::ChallengeRejected {
                identifier,
                challenge: kind,
                detail: format!(
                    "{} [{}]",
                    super::problem_detail(problem),
                    problem.r#type.as_deref().unwrap_or("no problem type")
                ),
            };
        }
    }
    match order_problem.as_ref().or(order.state().error.as_ref()) {
        Some(p) => AcmeError::OrderInvalid(format!(
            "{} [{}]",
            super::problem_detail(p),
            p.r#type.as_deref().unwrap_or("no problem type")
        )),
        None => AcmeError::OrderInvalid("the CA gave no reason".into()),
    }
}
