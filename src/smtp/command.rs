//! Command lines to [`Command`] values (RFC 5321 §4.1, with the ESMTP extensions we offer).
//!
//! The parser borrows from the line and copies only what the session keeps (addresses, decoded
//! parameters). It never panics and reports each malformation as one exact [`ProtocolError`].
//!
//! Line-ending policy: a command ends at CRLF or at a bare LF (lenient for commands; the DATA
//! receiver is strict). Trailing spaces and tabs before the line ending are ignored. Verbs and
//! parameter keywords are case-insensitive (RFC 5321 §2.4).

use super::address::{Mailbox, ReversePath};
use super::envelope::{BodyType, DeliverBy, Notify, Ret};
use super::error::{ProtocolError, SyntaxError};

/// RFC 3461 §4.4: ENVID is at most 100 characters.
const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: ORCPT is at most 500 characters.
const MAX_ORCPT: usize = 500;

/// A SASL mechanism we implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism (draft-murchison-sasl-login).
    Login,
}

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO domain`.
    Ehlo(&'a str),
    /// `HELO domain`.
    Helo(&'a str),
    /// `MAIL FROM:<path> [params]`.
    Mail {
        /// The sender, or `<>`.
        reverse_path: ReversePath,
        /// Decoded ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path> [params]`.
    Rcpt {
        /// The recipient.
        forward_path: Mailbox,
        /// Decoded ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets of chunk data following the command line.
        size: u64,
        /// Whether this is the final chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(&'a str),
    /// `HELP [string]`.
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The mechanism.
        mechanism: AuthMechanism,
        /// Base64 initial response; `=` stands for an empty one.
        initial_response: Option<&'a str>,
    },
}

/// MAIL FROM parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870), saturated at `usize::MAX`.
    pub size: Option<usize>,
    /// `BODY=`.
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext decoded.
    pub envid: Option<String>,
    /// `BY=` (RFC 2852).
    pub by: Option<DeliverBy>,
    /// `MT-PRIORITY=` (RFC 6710).
    pub mt_priority: Option<i8>,
    /// How many parameters were given (including ignored `AUTH=`).
    pub count: usize,
}

/// RCPT TO parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=`.
    pub notify: Notify,
    /// `ORCPT=` as `addr-type;address`, xtext decoded.
    pub orcpt: Option<String>,
    /// How many parameters were given.
    pub count: usize,
}

impl<'a> Command<'a> {
    /// Parses one command line; a trailing CRLF or LF, and trailing spaces, are ignored.
    pub fn parse(line: &'a [u8]) -> Result<Command<'a>, ProtocolError> {
        let line = trim_line(line);
        let (verb, args) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        let args = std::str::from_utf8(args)
            .map_err(|_| ProtocolError::Syntax(SyntaxError::NotUtf8))?
            .trim_start_matches(' ');
        let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
        let no_args = |cmd: Command<'a>, name: &'static str| {
            if args.is_empty() {
                Ok(cmd)
            } else {
                Err(ProtocolError::Syntax(SyntaxError::NoArguments(name)))
            }
        };
        if is("EHLO") || is("HELO") {
            if args.is_empty() {
                let e = if is("EHLO") {
                    SyntaxError::Ehlo
                } else {
                    SyntaxError::Helo
                };
                return Err(ProtocolError::Syntax(e));
            }
            return Ok(if is("EHLO") {
                Command::Ehlo(args)
            } else {
                Command::Helo(args)
            });
        }
        if is("MAIL") {
            return parse_mail(args);
        }
        if is("RCPT") {
            return parse_rcpt(args);
        }
        if is("DATA") {
            return no_args(Command::Data, "DATA");
        }
        if is("BDAT") {
            return parse_bdat(args);
        }
        if is("RSET") {
            return no_args(Command::Rset, "RSET");
        }
        if is("NOOP") {
            return Ok(Command::Noop);
        }
        if is("QUIT") {
            return no_args(Command::Quit, "QUIT");
        }
        if is("VRFY") {
            if args.is_empty() {
                return Err(ProtocolError::Syntax(SyntaxError::Vrfy));
            }
            return Ok(Command::Vrfy(args));
        }
        if is("HELP") {
            return Ok(Command::Help);
        }
        if is("STARTTLS") {
            return no_args(Command::StartTls, "STARTTLS");
        }
        if is("AUTH") {
            return parse_auth(args);
        }
        Err(ProtocolError::UnknownCommand)
    }
}

/// Strips the line ending (CRLF or bare LF) and trailing spaces/tabs.
fn trim_line(mut line: &[u8]) -> &[u8] {
    if let [head @ .., b'\n'] = line {
        line = head;
    }
    if let [head @ .., b'\r'] = line {
        line = head;
    }
    while let [head @ .., b' ' | b'\t'] = line {
        line = head;
    }
    line
}

/// Splits `FROM:` / `TO:` arguments into the bracketed path and the parameter text.
fn split_path<'s>(args: &'s str, prefix: &str) -> Option<(&'s str, &'s str)> {
    let head = args.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    // Many clients send `FROM: <a@b>`; RFC 5321 forbids the space but accepting it is harmless.
    let rest = args[prefix.len()..].trim_start_matches(' ');
    let mut in_quote = false;
    let mut escaped = false;
    let mut end = rest.find(' ').unwrap_or(rest.len());
    if rest.starts_with('<') {
        for (i, c) in rest.char_indices() {
            match (escaped, in_quote, c) {
                (true, _, _) => escaped = false,
                (false, true, '\\') => escaped = true,
                (false, _, '"') => in_quote = !in_quote,
                (false, false, '>') => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
    }
    Some((&rest[..end], &rest[end..]))
}

fn parse_mail(args: &str) -> Result<Command<'_>, ProtocolError> {
    let (path, rest) =
        split_path(args, "FROM:").ok_or(ProtocolError::Syntax(SyntaxError::MailFrom))?;
    let reverse_path = ReversePath::parse(path).map_err(ProtocolError::BadSender)?;
    let mut params = MailParams::default();
    for (keyword, value) in esmtp_params(rest)? {
        params.count += 1;
        let dup = match keyword.to_ascii_uppercase().as_str() {
            "SIZE" => {
                let v = value.filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
                let v = v.ok_or(value_error("SIZE"))?;
                // Digits only, so the parse fails only on overflow: saturate, it is too big anyway.
                params
                    .size
                    .replace(v.parse().unwrap_or(usize::MAX))
                    .is_some()
            }
            "BODY" => {
                let body = match value.map(str::to_ascii_uppercase).as_deref() {
                    Some("7BIT") => BodyType::SevenBit,
                    Some("8BITMIME") => BodyType::EightBitMime,
                    Some("BINARYMIME") => {
                        return Err(ProtocolError::UnsupportedParameter(
                            "BODY=BINARYMIME".into(),
                        ));
                    }
                    _ => return Err(value_error("BODY")),
                };
                params.body.replace(body).is_some()
            }
            "SMTPUTF8" => {
                if value.is_some() {
                    return Err(value_error("SMTPUTF8"));
                }
                std::mem::replace(&mut params.smtputf8, true)
            }
            "RET" => {
                let ret = match value.map(str::to_ascii_uppercase).as_deref() {
                    Some("FULL") => Ret::Full,
                    Some("HDRS") => Ret::Hdrs,
                    _ => return Err(value_error("RET")),
                };
                params.ret.replace(ret).is_some()
            }
            "ENVID" => {
                let envid = value
                    .filter(|v| v.len() <= MAX_ENVID)
                    .and_then(decode_xtext)
                    .ok_or(value_error("ENVID"))?;
                params.envid.replace(envid).is_some()
            }
            "BY" => {
                let by = value.and_then(parse_by).ok_or(value_error("BY"))?;
                params.by.replace(by).is_some()
            }
            "MT-PRIORITY" => {
                let p = value
                    .and_then(parse_priority)
                    .ok_or(value_error("MT-PRIORITY"))?;
                params.mt_priority.replace(p).is_some()
            }
            // RFC 4954 §5: AUTH= on MAIL may be accepted and ignored.
            "AUTH" => false,
            _ => {
                return Err(ProtocolError::UnsupportedParameter(
                    keyword.to_ascii_uppercase(),
                ));
            }
        };
        if dup {
            return Err(ProtocolError::Syntax(SyntaxError::Parameters));
        }
    }
    Ok(Command::Mail {
        reverse_path,
        params,
    })
}

fn parse_rcpt(args: &str) -> Result<Command<'_>, ProtocolError> {
    let (path, rest) = split_path(args, "TO:").ok_or(ProtocolError::Syntax(SyntaxError::RcptTo))?;
    let forward_path = Mailbox::parse_path(path).map_err(ProtocolError::BadRecipient)?;
    let mut params = RcptParams::default();
    let mut seen_notify = false;
    for (keyword, value) in esmtp_params(rest)? {
        params.count += 1;
        let dup = match keyword.to_ascii_uppercase().as_str() {
            "NOTIFY" => {
                params.notify = parse_notify(value.unwrap_or(""))?;
                std::mem::replace(&mut seen_notify, true)
            }
            "ORCPT" => {
                let orcpt = value.and_then(parse_orcpt).ok_or(value_error("ORCPT"))?;
                params.orcpt.replace(orcpt).is_some()
            }
            _ => {
                return Err(ProtocolError::UnsupportedParameter(
                    keyword.to_ascii_uppercase(),
                ));
            }
        };
        if dup {
            return Err(ProtocolError::Syntax(SyntaxError::Parameters));
        }
    }
    Ok(Command::Rcpt {
        forward_path,
        params,
    })
}

fn parse_bdat(args: &str) -> Result<Command<'_>, ProtocolError> {
    let err = ProtocolError::Syntax(SyntaxError::Bdat);
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(err.clone())?;
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err);
    }
    let size = size.parse().map_err(|_| err.clone())?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(err),
    };
    if words.next().is_some() {
        return Err(err);
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command<'_>, ProtocolError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = match words.next() {
        None => return Err(ProtocolError::Syntax(SyntaxError::Auth)),
        Some(m) if m.eq_ignore_ascii_case("PLAIN") => AuthMechanism::Plain,
        Some(m) if m.eq_ignore_ascii_case("LOGIN") => AuthMechanism::Login,
        Some(_) => return Err(ProtocolError::UnknownMechanism),
    };
    let initial_response = words.next();
    if words.next().is_some() {
        return Err(ProtocolError::Syntax(SyntaxError::Auth));
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

/// RFC 2852 §4: `by-time ";" by-mode [by-trace]`, by-time `["-"] 1*9digit`, by-mode `N` or
/// `R`, by-trace `T`. With `R` the time must be positive (§5.1).
fn parse_by(v: &str) -> Option<DeliverBy> {
    let (time, mode) = v.split_once(';')?;
    let digits = time.strip_prefix('-').unwrap_or(time);
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: i64 = time.parse().ok()?;
    let mode = mode.to_ascii_uppercase();
    let (return_on_expiry, trace) = match mode.as_str() {
        "R" => (true, false),
        "RT" => (true, true),
        "N" => (false, false),
        "NT" => (false, true),
        _ => return None,
    };
    (!return_on_expiry || seconds > 0).then_some(DeliverBy {
        seconds,
        return_on_expiry,
        trace,
    })
}

/// RFC 6710 §3: `["+" / "-"] DIGIT`, -9 to 9.
fn parse_priority(v: &str) -> Option<i8> {
    let digit = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digit.len() != 1 || !digit.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    v.parse().ok()
}

fn value_error(keyword: &'static str) -> ProtocolError {
    ProtocolError::Syntax(SyntaxError::ParameterValue(keyword))
}

/// Splits ` KEY[=VALUE] KEY[=VALUE]...` (RFC 5321 §4.1.2 esmtp-param).
fn esmtp_params(rest: &str) -> Result<Vec<(&str, Option<&str>)>, ProtocolError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ProtocolError::Syntax(SyntaxError::Parameters));
    }
    let mut out = Vec::new();
    for param in rest.split(' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value is %d33-60 / %d62-126 (no '='), widened to UTF-8 by RFC 6531 §3.3.
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && v.chars().all(|c| c != '=' && (c > ' ' && c != '\x7f'))
        });
        if !keyword_ok || !value_ok {
            return Err(ProtocolError::Syntax(SyntaxError::Parameters));
        }
        out.push((keyword, value));
    }
    Ok(out)
}

/// RFC 3461 §4.1: `NEVER` alone, or a comma list of SUCCESS, FAILURE, DELAY.
fn parse_notify(value: &str) -> Result<Notify, ProtocolError> {
    let mut notify = Notify::default();
    for word in value.split(',') {
        let flag = match word.to_ascii_uppercase().as_str() {
            "NEVER" => &mut notify.never,
            "SUCCESS" => &mut notify.success,
            "FAILURE" => &mut notify.failure,
            "DELAY" => &mut notify.delay,
            _ => return Err(value_error("NOTIFY")),
        };
        if std::mem::replace(flag, true) {
            return Err(value_error("NOTIFY"));
        }
    }
    if notify.never && (notify.success || notify.failure || notify.delay) {
        return Err(value_error("NOTIFY"));
    }
    Ok(notify)
}

/// RFC 3461 §4.2: `addr-type ";" xtext`, returned as `addr-type;decoded`.
fn parse_orcpt(value: &str) -> Option<String> {
    if value.len() > MAX_ORCPT {
        return None;
    }
    let (addr_type, xtext) = value.split_once(';')?;
    let type_ok = !addr_type.is_empty()
        && addr_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let address = decode_xtext(xtext).filter(|a| !a.is_empty())?;
    type_ok.then(|| format!("{addr_type};{address}"))
}

/// Decodes xtext (RFC 3461 §4): `+XX` is a hex-encoded byte; other characters stand for
/// themselves (non-ASCII UTF-8 allowed as in RFC 6533 utf-8-xtext).
pub fn decode_xtext(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'+' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if b == b'=' || b < b'!' || b == 0x7f {
            return None;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{AddressError, Domain};
    use crate::smtp::error::ProtocolError as E;
    use crate::smtp::error::SyntaxError as S;

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    /// Runs every case under CRLF, bare LF and trailing-space variants.
    fn check(cases: &[(&str, Result<Command<'static>, ProtocolError>)]) {
        for (input, want) in cases {
            for suffix in ["\r\n", "\n", " \r\n", "  \n", ""] {
                let line = format!("{input}{suffix}");
                assert_eq!(&Command::parse(line.as_bytes()), want, "line {line:?}");
            }
        }
    }

    #[test]
    fn simple_commands() {
        check(&[
            ("EHLO client.example", Ok(Command::Ehlo("client.example"))),
            ("ehlo [192.0.2.1]", Ok(Command::Ehlo("[192.0.2.1]"))),
            ("HELO x", Ok(Command::Helo("x"))),
            ("EHLO", Err(E::Syntax(S::Ehlo))),
            ("HELO", Err(E::Syntax(S::Helo))),
            ("DATA", Ok(Command::Data)),
            ("data x", Err(E::Syntax(S::NoArguments("DATA")))),
            ("RSET", Ok(Command::Rset)),
            ("RSET now", Err(E::Syntax(S::NoArguments("RSET")))),
            ("NOOP", Ok(Command::Noop)),
            ("NOOP hello there", Ok(Command::Noop)),
            ("QUIT", Ok(Command::Quit)),
            ("QUIT x", Err(E::Syntax(S::NoArguments("QUIT")))),
            ("VRFY bob", Ok(Command::Vrfy("bob"))),
            ("VRFY", Err(E::Syntax(S::Vrfy))),
            ("HELP", Ok(Command::Help)),
            ("HELP MAIL", Ok(Command::Help)),
            ("STARTTLS", Ok(Command::StartTls)),
            ("STARTTLS x", Err(E::Syntax(S::NoArguments("STARTTLS")))),
            ("EXPN list", Err(E::UnknownCommand)),
            ("", Err(E::UnknownCommand)),
            ("MAILFROM:<a@b.example>", Err(E::UnknownCommand)),
            (
                "BDAT 0",
                Ok(Command::Bdat {
                    size: 0,
                    last: false,
                }),
            ),
            (
                "BDAT 1000 LAST",
                Ok(Command::Bdat {
                    size: 1000,
                    last: true,
                }),
            ),
            (
                "bdat 5 last",
                Ok(Command::Bdat {
                    size: 5,
                    last: true,
                }),
            ),
            ("BDAT", Err(E::Syntax(S::Bdat))),
            ("BDAT x", Err(E::Syntax(S::Bdat))),
            ("BDAT -1", Err(E::Syntax(S::Bdat))),
            ("BDAT 5 FIRST", Err(E::Syntax(S::Bdat))),
            ("BDAT 5 LAST x", Err(E::Syntax(S::Bdat))),
            ("BDAT 99999999999999999999", Err(E::Syntax(S::Bdat))),
        ]);
    }

    #[test]
    fn auth_commands() {
        let auth = |mechanism, initial_response| {
            Ok(Command::Auth {
                mechanism,
                initial_response,
            })
        };
        check(&[
            ("AUTH PLAIN", auth(AuthMechanism::Plain, None)),
            ("auth login", auth(AuthMechanism::Login, None)),
            (
                "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                auth(AuthMechanism::Plain, Some("AGFsaWNlAHNlY3JldA==")),
            ),
            ("AUTH LOGIN =", auth(AuthMechanism::Login, Some("="))),
            ("AUTH", Err(E::Syntax(S::Auth))),
            ("AUTH CRAM-MD5", Err(E::UnknownMechanism)),
            ("AUTH PLAIN a b", Err(E::Syntax(S::Auth))),
        ]);
    }

    #[test]
    fn mail_commands() {
        let mail = |path: &str, params: MailParams| {
            Ok(Command::Mail {
                reverse_path: ReversePath::parse(path).unwrap(),
                params,
            })
        };
        let p = MailParams::default;
        check(&[
            ("MAIL FROM:<a@b.example>", mail("<a@b.example>", p())),
            ("mail from: <a@b.example>", mail("<a@b.example>", p())),
            ("MAIL FROM:<>", mail("<>", p())),
            (
                "MAIL FROM:<\"x y\"@b.example>",
                mail("<\"x y\"@b.example>", p()),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS \
                 ENVID=QQ+2BZ AUTH=<>",
                mail(
                    "<a@b.example>",
                    MailParams {
                        size: Some(1000),
                        body: Some(BodyType::EightBitMime),
                        smtputf8: true,
                        ret: Some(Ret::Hdrs),
                        envid: Some("QQ+Z".into()),
                        count: 6,
                        ..p()
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.example> size=99999999999999999999999 body=7bit ret=full",
                mail(
                    "<a@b.example>",
                    MailParams {
                        size: Some(usize::MAX),
                        body: Some(BodyType::SevenBit),
                        ret: Some(Ret::Full),
                        count: 3,
                        ..p()
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.example> BY=120;R MT-PRIORITY=+3",
                mail(
                    "<a@b.example>",
                    MailParams {
                        by: Some(DeliverBy {
                            seconds: 120,
                            return_on_expiry: true,
                            trace: false,
                        }),
                        mt_priority: Some(3),
                        count: 2,
                        ..p()
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.example> by=-5;nt mt-priority=-9",
                mail(
                    "<a@b.example>",
                    MailParams {
                        by: Some(DeliverBy {
                            seconds: -5,
                            return_on_expiry: false,
                            trace: true,
                        }),
                        mt_priority: Some(-9),
                        count: 2,
                        ..p()
                    },
                ),
            ),
            // R needs a positive time; a mode, digits and a range are required.
            (
                "MAIL FROM:<a@b.example> BY=0;R",
                Err(E::Syntax(S::ParameterValue("BY"))),
            ),
            (
                "MAIL FROM:<a@b.example> BY=60",
                Err(E::Syntax(S::ParameterValue("BY"))),
            ),
            (
                "MAIL FROM:<a@b.example> BY=1234567890;R",
                Err(E::Syntax(S::ParameterValue("BY"))),
            ),
            (
                "MAIL FROM:<a@b.example> BY=60;X",
                Err(E::Syntax(S::ParameterValue("BY"))),
            ),
            (
                "MAIL FROM:<a@b.example> MT-PRIORITY=10",
                Err(E::Syntax(S::ParameterValue("MT-PRIORITY"))),
            ),
            (
                "MAIL FROM:<a@b.example> MT-PRIORITY=high",
                Err(E::Syntax(S::ParameterValue("MT-PRIORITY"))),
            ),
            ("MAIL", Err(E::Syntax(S::MailFrom))),
            ("MAIL TO:<a@b.example>", Err(E::Syntax(S::MailFrom))),
            (
                "MAIL FROM:a@b.example",
                Err(E::BadSender(AddressError::MissingBrackets)),
            ),
            (
                "MAIL FROM:<a>",
                Err(E::BadSender(AddressError::Unqualified)),
            ),
            ("MAIL FROM:<a@b.example>x", Err(E::Syntax(S::Parameters))),
            ("MAIL FROM:<a@b.example> =x", Err(E::Syntax(S::Parameters))),
            (
                "MAIL FROM:<a@b.example> SIZE=",
                Err(E::Syntax(S::Parameters)),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=1=2",
                Err(E::Syntax(S::Parameters)),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=x",
                Err(E::Syntax(S::ParameterValue("SIZE"))),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE",
                Err(E::Syntax(S::ParameterValue("SIZE"))),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=1 SIZE=2",
                Err(E::Syntax(S::Parameters)),
            ),
            (
                "MAIL FROM:<a@b.example> BODY=BINARYMIME",
                Err(E::UnsupportedParameter("BODY=BINARYMIME".into())),
            ),
            (
                "MAIL FROM:<a@b.example> BODY=9BIT",
                Err(E::Syntax(S::ParameterValue("BODY"))),
            ),
            (
                "MAIL FROM:<a@b.example> SMTPUTF8=yes",
                Err(E::Syntax(S::ParameterValue("SMTPUTF8"))),
            ),
            (
                "MAIL FROM:<a@b.example> RET=ALL",
                Err(E::Syntax(S::ParameterValue("RET"))),
            ),
            (
                "MAIL FROM:<a@b.example> ENVID=a+zz",
                Err(E::Syntax(S::ParameterValue("ENVID"))),
            ),
            (
                "MAIL FROM:<a@b.example> ENVID=a+4",
                Err(E::Syntax(S::ParameterValue("ENVID"))),
            ),
            (
                "MAIL FROM:<a@b.example> XFOO=1",
                Err(E::UnsupportedParameter("XFOO".into())),
            ),
        ]);
        let long = format!("MAIL FROM:<a@b.example> ENVID={}", "x".repeat(101));
        assert_eq!(
            Command::parse(long.as_bytes()),
            Err(E::Syntax(S::ParameterValue("ENVID")))
        );
        assert_eq!(
            Command::parse(b"MAIL FROM:<\xff@b.example>\r\n"),
            Err(E::Syntax(S::NotUtf8))
        );
    }

    #[test]
    fn rcpt_commands() {
        let rcpt = |path: &str, params: RcptParams| {
            Ok(Command::Rcpt {
                forward_path: mb(path),
                params,
            })
        };
        let notify = |never, success, failure, delay| Notify {
            never,
            success,
            failure,
            delay,
        };
        check(&[
            (
                "RCPT TO:<c@d.example>",
                rcpt("c@d.example", RcptParams::default()),
            ),
            (
                "rcpt to:<@x.example:c@d.example>",
                rcpt("c@d.example", RcptParams::default()),
            ),
            (
                "RCPT TO:<c@d.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c+40d.example",
                rcpt(
                    "c@d.example",
                    RcptParams {
                        notify: notify(false, true, false, true),
                        orcpt: Some("rfc822;c@d.example".into()),
                        count: 2,
                    },
                ),
            ),
            (
                "RCPT TO:<c@d.example> notify=never",
                rcpt(
                    "c@d.example",
                    RcptParams {
                        notify: notify(true, false, false, false),
                        count: 1,
                        ..RcptParams::default()
                    },
                ),
            ),
            (
                "RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS",
                Err(E::Syntax(S::ParameterValue("NOTIFY"))),
            ),
            (
                "RCPT TO:<c@d.example> NOTIFY=FAILURE,FAILURE",
                Err(E::Syntax(S::ParameterValue("NOTIFY"))),
            ),
            (
                "RCPT TO:<c@d.example> NOTIFY=SOMETIMES",
                Err(E::Syntax(S::ParameterValue("NOTIFY"))),
            ),
            (
                "RCPT TO:<c@d.example> NOTIFY",
                Err(E::Syntax(S::ParameterValue("NOTIFY"))),
            ),
            (
                "RCPT TO:<c@d.example> ORCPT=rfc822",
                Err(E::Syntax(S::ParameterValue("ORCPT"))),
            ),
            (
                "RCPT TO:<c@d.example> ORCPT=;a",
                Err(E::Syntax(S::ParameterValue("ORCPT"))),
            ),
            (
                "RCPT TO:<c@d.example> SIZE=1",
                Err(E::UnsupportedParameter("SIZE".into())),
            ),
            ("RCPT", Err(E::Syntax(S::RcptTo))),
            ("RCPT FROM:<c@d.example>", Err(E::Syntax(S::RcptTo))),
            ("RCPT TO:<>", Err(E::BadRecipient(AddressError::Empty))),
            (
                "RCPT TO:<postmaster>",
                Err(E::BadRecipient(AddressError::Unqualified)),
            ),
            (
                "RCPT TO:<c@[1.2.3]>",
                Err(E::BadRecipient(AddressError::AddressLiteral)),
            ),
        ]);
        assert_eq!(
            mb("c@[1.2.3.4]").domain,
            Domain::Ipv4(std::net::Ipv4Addr::new(1, 2, 3, 4))
        );
    }

    #[test]
    fn xtext() {
        assert_eq!(decode_xtext("a+2Bb+3D"), Some("a+b=".into()));
        assert_eq!(decode_xtext("é"), Some("é".into()));
        assert_eq!(decode_xtext("a=b"), None);
        assert_eq!(decode_xtext("+FF"), None);
        assert_eq!(decode_xtext(""), Some(String::new()));
    }
}
