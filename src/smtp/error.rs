//! Peer faults of the SMTP server and the one place that maps them to replies.
//!
//! [`ProtocolError`] values carry data, not reply text; `impl From<&ProtocolError> for Reply`
//! holds every error reply the server sends, so wording and codes are reviewed in one place.

use super::address::AddressError;
use super::reply::Reply;
use super::server::CommitError;

/// Something the peer did wrong, or a limit it hit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The verb is not one we implement.
    #[error("unrecognized command")]
    UnknownCommand,
    /// A command line exceeded `max_line_length`.
    #[error("command line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in force, CRLF included.
        limit: usize,
    },
    /// The arguments of a known command are malformed.
    #[error("syntax error: {0}")]
    Syntax(SyntaxError),
    /// The MAIL FROM path is malformed.
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// The RCPT TO path is malformed.
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// A MAIL/RCPT parameter (or parameter value) we do not implement, e.g. `BODY=BINARYMIME`.
    #[error("unsupported parameter {0}")]
    UnsupportedParameter(String),
    /// ESMTP parameters after HELO (RFC 5321 §4.1.1.1: extensions need EHLO).
    #[error("esmtp parameters used after helo")]
    ParamsAfterHelo,
    /// A command valid in general but not at this point of the dialogue.
    #[error("command out of sequence: {0}")]
    OutOfSequence(Sequence),
    /// DATA or BDAT without an accepted recipient.
    #[error("no valid recipients")]
    NoValidRecipients,
    /// MAIL on a submission port before AUTH.
    #[error("authentication required")]
    AuthRequired,
    /// AUTH before TLS (RFC 4954 §6, 538).
    #[error("encryption required for authentication")]
    EncryptionRequired,
    /// AUTH with a mechanism other than PLAIN or LOGIN.
    #[error("unrecognized authentication mechanism")]
    UnknownMechanism,
    /// The client answered a 334 challenge with `*` (RFC 4954 §4).
    #[error("authentication cancelled")]
    AuthCancelled,
    /// An AUTH response that is not valid base64.
    #[error("invalid base64 in authentication response")]
    BadBase64,
    /// Decoded AUTH data of the wrong shape (RFC 4616 §2 message, UTF-8).
    #[error("malformed authentication data")]
    MalformedCredentials,
    /// The credentials were checked and refused.
    #[error("authentication credentials invalid")]
    BadCredentials,
    /// The credentials could not be checked now.
    #[error("temporary authentication failure")]
    AuthUnavailable,
    /// An authenticated user used a MAIL FROM outside their allowed senders.
    #[error("sender address not owned by user {user}")]
    SenderNotOwned {
        /// The authenticated user name.
        user: String,
    },
    /// RCPT from an untrusted, unauthenticated client (every recipient is a relay).
    #[error("relay access denied")]
    RelayDenied,
    /// RCPT beyond `max_recipients`.
    #[error("more than {limit} recipients")]
    TooManyRecipients {
        /// The limit in force.
        limit: usize,
    },
    /// SIZE= or the received body exceeds `max_message_size`.
    #[error("message larger than {limit} bytes")]
    MessageTooBig {
        /// The limit in force.
        limit: usize,
    },
    /// STARTTLS when no certificate is configured.
    #[error("tls not available")]
    TlsNotAvailable,
    /// More than `max_bad_commands` errors; the session closes.
    #[error("too many errors")]
    TooManyErrors,
    /// `max_auth_failures` reached, or the checker throttled the client; the session closes.
    #[error("too many failed authentication attempts")]
    TooManyAuthFailures,
    /// No input within the command or data timeout; the session closes.
    #[error("timeout exceeded")]
    Timeout {
        /// Our host name, quoted in the reply.
        hostname: String,
    },
    /// A DATA body or BDAT transaction fell below `min_data_rate`; the session closes.
    #[error("data transfer too slow")]
    TransferTooSlow {
        /// Our host name, quoted in the reply.
        hostname: String,
    },
    /// The client's address sent more messages than `limits.message_rate_per_ip` allows.
    #[error("message rate limit exceeded")]
    MessageRateExceeded,
}

/// Which sequencing rule a command broke (RFC 5321 §4.1.4, 503).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Sequence {
    /// MAIL or AUTH before EHLO/HELO.
    #[error("no ehlo or helo yet")]
    NoHelo,
    /// MAIL inside a transaction.
    #[error("nested mail command")]
    NestedMail,
    /// RCPT without MAIL.
    #[error("no mail command yet")]
    NoMail,
    /// AUTH after a successful AUTH (RFC 4954 §4).
    #[error("already authenticated")]
    AlreadyAuthenticated,
    /// AUTH inside a transaction (RFC 4954 §4).
    #[error("auth inside a transaction")]
    AuthInTransaction,
    /// STARTTLS on an encrypted session (RFC 3207 §4).
    #[error("tls already active")]
    TlsActive,
    /// DATA after BDAT in the same transaction (RFC 3030 §3).
    #[error("data after bdat")]
    DataAfterBdat,
}

/// Why a known command's arguments are malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// EHLO without a domain.
    #[error("ehlo needs a domain")]
    Ehlo,
    /// HELO without a domain.
    #[error("helo needs a domain")]
    Helo,
    /// MAIL not followed by `FROM:`.
    #[error("expected mail from:<path>")]
    MailFrom,
    /// RCPT not followed by `TO:`.
    #[error("expected rcpt to:<path>")]
    RcptTo,
    /// BDAT without a valid chunk size or with something other than LAST after it.
    #[error("expected bdat size [last]")]
    Bdat,
    /// VRFY without an argument.
    #[error("vrfy needs an argument")]
    Vrfy,
    /// AUTH without a mechanism or with extra arguments.
    #[error("expected auth mechanism [initial-response]")]
    Auth,
    /// A command that takes no arguments was given some.
    #[error("{0} takes no arguments")]
    NoArguments(&'static str),
    /// The arguments are not UTF-8.
    #[error("command is not utf-8")]
    NotUtf8,
    /// A malformed or repeated `keyword=value` parameter.
    #[error("malformed parameters")]
    Parameters,
    /// A known parameter with an invalid value (e.g. `NOTIFY=NEVER,SUCCESS`).
    #[error("invalid value for {0}")]
    ParameterValue(&'static str),
}

impl ProtocolError {
    /// Whether this error counts toward `max_bad_commands`: protocol misuse does, policy
    /// refusals (relay, size, recipients, sender ownership) do not, so a legitimate client with
    /// many refused recipients is not cut off.
    pub fn is_bad_command(&self) -> bool {
        use ProtocolError::*;
        matches!(
            self,
            UnknownCommand
                | LineTooLong { .. }
                | Syntax(_)
                | BadSender(_)
                | BadRecipient(_)
                | UnsupportedParameter(_)
                | ParamsAfterHelo
                | OutOfSequence(_)
                | NoValidRecipients
                | AuthRequired
                | EncryptionRequired
                | UnknownMechanism
                | BadBase64
                | MalformedCredentials
        )
    }
}

impl ProtocolError {
    /// Refusals a client can repeat without end without being wrong (relay denied, message
    /// rate): they count toward `max_junk_commands` like keep-alives, so they cannot hold a
    /// session forever.
    pub fn is_junk(&self) -> bool {
        matches!(
            self,
            ProtocolError::RelayDenied | ProtocolError::MessageRateExceeded
        )
    }
}

/// Why a new connection is turned away before the greeting (RFC 5321 §3.1: a 421 in place of
/// the 220).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    /// The worker serves as many connections as it may.
    #[error("too many connections")]
    TooManyConnections,
    /// The client address has as many connections as it may.
    #[error("too many connections from the address")]
    TooManyFromAddress,
    /// The client address opens connections faster than it may.
    #[error("connection rate exceeded")]
    RateExceeded,
}

impl From<&ConnectionRefused> for Reply {
    fn from(e: &ConnectionRefused) -> Reply {
        match e {
            ConnectionRefused::TooManyConnections => {
                Reply::with_enhanced(421, (4, 3, 2), "Too many connections, try again later")
            }
            ConnectionRefused::TooManyFromAddress => Reply::with_enhanced(
                421,
                (4, 7, 0),
                "Too many connections from your address, try again later",
            ),
            ConnectionRefused::RateExceeded => Reply::with_enhanced(
                421,
                (4, 7, 0),
                "Connection rate limit exceeded for your address, try again later",
            ),
        }
    }
}

impl From<&ProtocolError> for Reply {
    fn from(e: &ProtocolError) -> Reply {
        use ProtocolError::*;
        fn r(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
            Reply::with_enhanced(code, enhanced, text)
        }
        match e {
            UnknownCommand => r(500, (5, 5, 1), "Command unrecognized"),
            LineTooLong { .. } => r(500, (5, 5, 2), "Line too long"),
            Syntax(s) => r(501, (5, 5, 4), syntax_text(*s)),
            BadSender(_) => r(501, (5, 1, 7), "Bad sender address syntax"),
            BadRecipient(_) => r(501, (5, 1, 3), "Bad recipient address syntax"),
            // RFC 5321 §4.2.2: 555 is "MAIL FROM/RCPT TO parameters not recognized".
            UnsupportedParameter(p) => r(555, (5, 5, 4), format!("Unsupported parameter {p}")),
            ParamsAfterHelo => r(555, (5, 5, 4), "ESMTP parameters require EHLO"),
            OutOfSequence(s) => r(503, (5, 5, 1), sequence_text(*s)),
            NoValidRecipients => r(554, (5, 5, 1), "No valid recipients"),
            AuthRequired => r(530, (5, 7, 0), "Authentication required"),
            EncryptionRequired => r(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ),
            // RFC 4954 §4: 504 for an unsupported mechanism.
            UnknownMechanism => r(504, (5, 5, 4), "Unrecognized authentication type"),
            AuthCancelled => r(501, (5, 0, 0), "Authentication cancelled"),
            BadBase64 => r(501, (5, 5, 2), "Cannot decode response"),
            MalformedCredentials => r(501, (5, 5, 2), "Malformed authentication data"),
            BadCredentials => r(535, (5, 7, 8), "Authentication credentials invalid"),
            AuthUnavailable => r(454, (4, 7, 0), "Temporary authentication failure"),
            SenderNotOwned { user } => r(
                550,
                (5, 7, 1),
                format!("Sender address rejected: not owned by user {user}"),
            ),
            RelayDenied => r(554, (5, 7, 1), "Relay access denied"),
            TooManyRecipients { .. } => r(452, (4, 5, 3), "Too many recipients"),
            MessageTooBig { .. } => r(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ),
            TlsNotAvailable => r(454, (4, 7, 0), "TLS not available"),
            TooManyErrors => r(421, (4, 7, 0), "Too many errors"),
            TooManyAuthFailures => r(421, (4, 7, 0), "Too many failed authentication attempts"),
            Timeout { hostname } => r(
                421,
                (4, 4, 2),
                format!("{hostname} Error: timeout exceeded"),
            ),
            TransferTooSlow { hostname } => r(
                421,
                (4, 4, 2),
                format!("{hostname} Error: data transfer too slow"),
            ),
            MessageRateExceeded => r(
                450,
                (4, 7, 1),
                "Message rate limit exceeded for your address, try again later",
            ),
        }
    }
}

impl From<&CommitError> for Reply {
    fn from(e: &CommitError) -> Reply {
        let r = Reply::with_enhanced;
        match e {
            CommitError::SpoolFull => r(452, (4, 3, 1), "Insufficient system storage"),
            CommitError::SpoolIo => r(451, (4, 3, 0), "Local error in processing"),
            CommitError::ShuttingDown => shutting_down(),
            CommitError::Rejected(reply) => reply.clone(),
        }
    }
}

/// `421 4.3.2`, sent when the server shuts down (RFC 5321 §3.8).
pub(super) fn shutting_down() -> Reply {
    Reply::with_enhanced(421, (4, 3, 2), "Service shutting down")
}

fn syntax_text(s: SyntaxError) -> String {
    use SyntaxError::*;
    match s {
        Ehlo => "Syntax: EHLO hostname".into(),
        Helo => "Syntax: HELO hostname".into(),
        MailFrom => "Syntax: MAIL FROM:<address> [parameters]".into(),
        RcptTo => "Syntax: RCPT TO:<address> [parameters]".into(),
        Bdat => "Syntax: BDAT size [LAST]".into(),
        Vrfy => "Syntax: VRFY address".into(),
        Auth => "Syntax: AUTH mechanism [initial-response]".into(),
        NoArguments(verb) => format!("Syntax: {verb}"),
        NotUtf8 => "Invalid UTF-8 in command".into(),
        Parameters => "Syntax error in parameters".into(),
        ParameterValue(keyword) => format!("Invalid {keyword} value"),
    }
}

fn sequence_text(s: Sequence) -> &'static str {
    use Sequence::*;
    match s {
        NoHelo => "Send EHLO or HELO first",
        NestedMail => "Nested MAIL command",
        NoMail => "Need MAIL command",
        AlreadyAuthenticated => "Already authenticated",
        AuthInTransaction => "AUTH not permitted during a mail transaction",
        TlsActive => "TLS already active",
        DataAfterBdat => "DATA not permitted after BDAT",
    }
}
