//! `[[api_tokens]]`: bearer tokens for the HTTP API, stored as SHA-256 hashes, with scopes.

use sha2::{Digest, Sha256};

use super::raw::RawApiToken;
use super::resolved::Resolver;

/// What a token may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Read the queue, sites, suspensions, suppressions and messages (`GET`).
    pub read: bool,
    /// Change them (`POST`, `DELETE`); implies `read`.
    pub write: bool,
    /// Inject messages (`POST /api/v1/messages`) from any sender.
    pub inject: bool,
}

/// One API token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Its name (logs, the injected messages' user `token:<name>`).
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// What it may do.
    pub scopes: Scopes,
}

/// The SHA-256 of a token, as `token_sha256` holds it (lower-case hex).
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The token `presented` matches, if any (the hashes are compared in constant time).
pub fn find<'a>(tokens: &'a [ApiToken], presented: &str) -> Option<&'a ApiToken> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    tokens.iter().find(|t| {
        t.sha256
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    })
}

pub(super) fn resolve(r: &mut Resolver, raw: Vec<RawApiToken>) -> Vec<ApiToken> {
    let mut out: Vec<ApiToken> = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let key = format!("api_tokens[{i}]");
        if t.name.is_empty() || out.iter().any(|o| o.name == t.name) {
            r.problem(format!("{key}.name"), "must be non-empty and unique");
        }
        let hex = t.token_sha256.to_ascii_lowercase();
        let mut sha256 = [0u8; 32];
        let parsed = hex.len() == 64
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && (0..32).all(|j| match u8::from_str_radix(&hex[2 * j..2 * j + 2], 16) {
                Ok(b) => {
                    sha256[j] = b;
                    true
                }
                Err(_) => false,
            });
        if !parsed {
            r.problem(
                format!("{key}.token_sha256"),
                "not 64 hex digits (`ringmta api-token` prints a token and its hash)",
            );
        }
        let mut scopes = Scopes::default();
        for s in &t.scopes {
            match s.as_str() {
                "read" => scopes.read = true,
                "write" => {
                    scopes.write = true;
                    scopes.read = true;
                }
                "inject" => scopes.inject = true,
                other => r.problem(
                    format!("{key}.scopes"),
                    format!("{other:?} is not \"read\", \"write\" or \"inject\""),
                ),
            }
        }
        if t.scopes.is_empty() {
            r.problem(format!("{key}.scopes"), "give at least one scope");
        }
        out.push(ApiToken {
            name: t.name,
            sha256,
            scopes,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml;

    #[test]
    fn tokens_resolve_match_by_hash_and_problems_are_named() {
        let hash = token_sha256("s3cret-token");
        assert_eq!(hash.len(), 64);
        let c = from_toml(
            &format!(
                "[[api_tokens]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nscopes = [\"write\"]\n",
                hash.to_uppercase()
            ),
            "t",
        )
        .unwrap();
        let t = find(&c.api_tokens, "s3cret-token").unwrap();
        assert_eq!(t.name, "ops");
        assert_eq!(
            t.scopes,
            Scopes {
                read: true,
                write: true,
                inject: false
            }
        );
        assert!(find(&c.api_tokens, "s3cret-tokeN").is_none());
        let err = from_toml(
            "[[api_tokens]]\nname = \"\"\ntoken_sha256 = \"abc\"\nscopes = [\"admin\"]\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "api_tokens[0].name",
            "api_tokens[0].token_sha256",
            "api_tokens[0].scopes",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        // A listener other hosts can reach needs tokens.
        let err = from_toml("[listen]\nhttp = \"0.0.0.0:8025\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen.http"), "{err}");
        assert!(err.contains("api_tokens"), "{err}");
        let ok = from_toml(
            &format!(
                "[listen]\nhttp = \"0.0.0.0:8025\"\n[[api_tokens]]\nname = \"a\"\n\
                 token_sha256 = \"{hash}\"\nscopes = [\"read\"]\n"
            ),
            "t",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
