//! Chat templates: the Jinja templates Hugging Face models ship to turn a conversation
//! into a prompt, rendered with [`minijinja`] in the environment `transformers` uses.
//!
//! `transformers` (5.x, `utils/chat_template_utils.py`) renders templates with jinja2's
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` plus the loop-controls
//! extension, a JSON filter of its own (`tojson` without HTML escaping, with `indent`,
//! `separators`, `sort_keys` and `ensure_ascii`), `raise_exception`, `strftime_now`, and the
//! variables `messages`, `tools` and `documents` (both `None` unless given),
//! `add_generation_prompt` and the tokenizer's named special tokens (`bos_token`, `eos_token`,
//! `unk_token`, `pad_token`, ...). [`ChatTemplate`] sets up the same environment: Python string
//! and dict methods come from `minijinja-contrib`'s `pycompat`, and values are printed the way
//! Python prints them (`None`, `True`, `1.0`, `['a', 1]`).
//!
//! Known differences from jinja2, none of which the chat templates of Llama-family models
//! exercise: `strftime_now` formats the current time in UTC rather than in the machine's
//! local zone; string concatenation with `~` and the `string` filter print `none`/`true`
//! the minijinja way; the `\N{...}`, `\a`, `\v` and `\U........` escapes of Python string
//! literals are not understood inside template string literals.

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};

use crate::error::Error;

/// The name the template is registered under inside its environment; it shows up in
/// minijinja's error messages ("in chat_template:3").
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation, as a chat template sees it (`message['role']`,
/// `message['content']`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// Who speaks: `"system"`, `"user"` or `"assistant"` (templates may accept others).
    pub role: String,
    /// What they say.
    pub content: String,
}

impl ChatMessage {
    /// A message with an arbitrary role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template, ready to render conversations the way `transformers`'
/// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does.
///
/// Cheap to clone (the compiled template is shared) and safe to use from many threads.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    /// The tokenizer's named special tokens (`bos_token`, `eos_token`, ...), passed to the
    /// template as variables, in `transformers`' order.
    special_tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_chars", &self.source.chars().count())
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

/// The error `raise_exception(message)` produces, carried as the source of a minijinja error so
/// that the message can be told apart from the engine's own errors.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// Compiles `source`, a Jinja chat template, with `bos_token` and `eos_token` as the values
    /// of the template variables of the same names (left undefined when `None`).
    ///
    /// # Errors
    ///
    /// [`Error::ChatTemplate`] when the template does not compile; the message names the line.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> crate::Result<Self> {
        let mut special_tokens = Vec::new();
        if let Some(bos) = bos_token {
            special_tokens.push(("bos_token".to_owned(), bos.to_owned()));
        }
        if let Some(eos) = eos_token {
            special_tokens.push(("eos_token".to_owned(), eos.to_owned()));
        }
        Self::with_special_tokens(source, special_tokens)
    }

    /// Compiles `source` with the given named special tokens (`("bos_token", "<s>")`, ...) as
    /// template variables.
    pub(crate) fn with_special_tokens(
        source: &str,
        special_tokens: Vec<(String, String)>,
    ) -> crate::Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| {
                Error::ChatTemplate(format!("cannot configure the template syntax: {e}"))
            })?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        // A template comes with the model file: bound its work. Real chat templates use
        // a few thousand instructions per conversation; a hostile one runs out of fuel
        // (or of output room) within a fraction of a second.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| Error::ChatTemplate(describe_compile_error(&e)))?;
        Ok(Self {
            env: Arc::new(env),
            source: Arc::from(source),
            special_tokens,
        })
    }

    /// Renders `messages` as `transformers`' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=add_generation_prompt)` does.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyInput`] when `messages` is empty (as `transformers` refuses it), and
    /// [`Error::ChatTemplate`] when rendering fails: the template called `raise_exception` (the
    /// message is its argument), or used a value in a way that fails.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> crate::Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Value::Null)
    }

    /// Like [`render`](Self::render), with additional template variables: `extra` is a JSON
    /// object whose entries are passed to the template as `transformers` passes the keyword
    /// arguments of `apply_chat_template` (`date_string`, `tools`, `documents`,
    /// `enable_thinking`, ...); they override the special tokens of the same name. `null`
    /// stands for no extra variables.
    ///
    /// # Errors
    ///
    /// As [`render`](Self::render); also [`Error::ChatTemplate`] when `extra` is neither a
    /// JSON object nor `null`.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> crate::Result<String> {
        if messages.is_empty() {
            return Err(Error::EmptyInput(
                "a chat template needs at least one message to render".to_owned(),
            ));
        }
        let extra = match extra {
            serde_json::Value::Null => None,
            serde_json::Value::Object(map) => Some(map),
            other => {
                return Err(Error::ChatTemplate(format!(
                    "extra template variables must be a JSON object, got {other}"
                )))
            }
        };
        let mut context: Vec<(String, Value)> = vec![
            ("messages".to_owned(), Value::from(Serde(messages))),
            ("tools".to_owned(), Value::from(())),
            ("documents".to_owned(), Value::from(())),
            (
                "add_generation_prompt".to_owned(),
                Value::from(add_generation_prompt),
            ),
        ];
        for (name, value) in &self.special_tokens {
            context.push((name.clone(), Value::from(value.as_str())));
        }
        if let Some(extra) = extra {
            for (name, value) in extra {
                let value = Value::from(Serde(value));
                match context.iter_mut().find(|(key, _)| key == name) {
                    Some(slot) => slot.1 = value,
                    None => context.push((name.clone(), value)),
                }
            }
        }
        let context = Value::from_pairs(context);
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let mut out = CappedOutput::default();
        template
            .render_captured_to(context, &mut out)
            .map(drop)
            .map_err(|e| match out.overflowed {
                true => Error::ChatTemplate(format!(
                    "the chat template's output passed {MAX_TEMPLATE_OUTPUT} bytes: refused"
                )),
                false => Error::ChatTemplate(describe_render_error(&e)),
            })?;
        String::from_utf8(out.bytes)
            .map_err(|_| Error::ChatTemplate("the chat template wrote invalid UTF-8".into()))
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The work one render may do, in minijinja's fuel: one per instruction and one per
/// 64 bytes of data a template creates (strings, lists, output), so it bounds both
/// time and memory (at most 64 MB of data made). Real templates use a few thousand.
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// The widest `tojson(indent=N)` accepted.
const MAX_TOJSON_INDENT: i64 = 64;

/// Bytes one render may write.
pub const MAX_TEMPLATE_OUTPUT: usize = 16 << 20;

/// The render's output, refusing to grow past [`MAX_TEMPLATE_OUTPUT`].
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_TEMPLATE_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other(
                "the template's output is over its cap",
            ));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `transformers` knows a `{% generation %}...{% endgeneration %}` block (it marks the
/// assistant's part for training masks and renders its body unchanged); minijinja does not.
/// Each such tag is rewritten into `{% if true %}` / `{% endif %}`, keeping its whitespace
/// control markers, which renders the same.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let (before, tag) = rest.split_at(start);
        out.push_str(before);
        let body = &tag[2..];
        let marker_len = usize::from(body.starts_with('-') || body.starts_with('+'));
        let after_marker = &body[marker_len..];
        let trimmed = after_marker.trim_start();
        let keyword = ["endgeneration", "generation"].into_iter().find(|keyword| {
            trimmed.strip_prefix(keyword).is_some_and(|after| {
                let after = after.trim_start();
                after.starts_with("%}") || after.starts_with("-%}") || after.starts_with("+%}")
            })
        });
        match keyword {
            Some(keyword) => {
                let replacement = if keyword == "generation" {
                    "if true"
                } else {
                    "endif"
                };
                let skipped = after_marker.len() - trimmed.len();
                out.push_str("{%");
                out.push_str(&body[..marker_len + skipped]);
                out.push_str(replacement);
                rest = &trimmed[keyword.len()..];
            }
            None => {
                out.push_str("{%");
                rest = body;
            }
        }
    }
    out.push_str(rest);
    out
}

fn describe_compile_error(err: &minijinja::Error) -> String {
    let detail = err.detail().unwrap_or("invalid template");
    match err.line() {
        Some(line) => format!(
            "cannot compile the chat template: {} at line {line}: {detail}",
            err.kind()
        ),
        None => format!("cannot compile the chat template: {}: {detail}", err.kind()),
    }
}

fn describe_render_error(err: &minijinja::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(raised) = cause.downcast_ref::<RaisedException>() {
            return format!("the template raised an exception: {raised}");
        }
        source = cause.source();
    }
    let detail = err.detail().unwrap_or("rendering failed");
    match err.line() {
        Some(line) => format!(
            "cannot render the chat template: {} at line {line}: {detail}",
            err.kind()
        ),
        None => format!("cannot render the chat template: {}: {detail}", err.kind()),
    }
}

/// `raise_exception(message)`: fails the render with `message`, like jinja2's `TemplateError`.
fn raise_exception(message: Value) -> Result<Value, minijinja::Error> {
    let message = match message.as_str() {
        Some(text) => text.to_owned(),
        None => python_str(&message),
    };
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(RaisedException(message)),
    )
}

/// `strftime_now(format)`: the current time (UTC) formatted like Python's `strftime`.
fn strftime_now(format: &str) -> Result<Value, minijinja::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| {
            minijinja::Error::new(ErrorKind::InvalidOperation, format!("system clock: {e}"))
        })?;
    let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    Ok(Value::from(strftime(
        format,
        &CivilTime::from_unix(seconds),
    )))
}

/// A point in time broken down the way `strftime` needs it (proleptic Gregorian, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CivilTime {
    pub(crate) year: i64,
    /// 1..=12
    pub(crate) month: u32,
    /// 1..=31
    pub(crate) day: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
    /// 0 = Monday .. 6 = Sunday
    pub(crate) weekday: u32,
    /// 1..=366
    pub(crate) day_of_year: u32,
}

impl CivilTime {
    /// Breaks down seconds since the Unix epoch (UTC).
    pub(crate) fn from_unix(seconds: i64) -> Self {
        let days = seconds.div_euclid(86_400);
        let rem = seconds.rem_euclid(86_400);
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let month = month as u32;
        let day = day as u32;
        let day_of_year = CUMULATIVE[(month - 1) as usize] + day + u32::from(leap && month > 2);
        // 1970-01-01 was a Thursday (weekday 3 with Monday = 0).
        let weekday = (days + 3).rem_euclid(7) as u32;
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            weekday,
            day_of_year,
        }
    }
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Formats `time` like C's `strftime` in the C locale (the directives Python documents, plus
/// glibc's `%-d`-style flag that drops the padding). Unknown directives are kept as written.
pub(crate) fn strftime(format: &str, time: &CivilTime) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(directive) = chars.next() else {
            out.push('%');
            if no_pad {
                out.push('-');
            }
            break;
        };
        let num = |out: &mut String, value: i64, width: usize| {
            if no_pad {
                let _ = write!(out, "{value}");
            } else {
                let _ = write!(out, "{value:0width$}");
            }
        };
        let weekday = WEEKDAYS[time.weekday as usize % 7];
        let month = MONTHS[(time.month as usize + 11) % 12];
        let hour12 = match time.hour % 12 {
            0 => 12,
            h => h,
        };
        match directive {
            'a' => out.push_str(&weekday[..3]),
            'A' => out.push_str(weekday),
            'b' | 'h' => out.push_str(&month[..3]),
            'B' => out.push_str(month),
            'd' => num(&mut out, i64::from(time.day), 2),
            'e' => {
                let _ = write!(out, "{:>2}", time.day);
            }
            'm' => num(&mut out, i64::from(time.month), 2),
            'y' => num(&mut out, time.year.rem_euclid(100), 2),
            'Y' => {
                let _ = write!(out, "{}", time.year);
            }
            'H' => num(&mut out, i64::from(time.hour), 2),
            'I' => num(&mut out, i64::from(hour12), 2),
            'M' => num(&mut out, i64::from(time.minute), 2),
            'S' => num(&mut out, i64::from(time.second), 2),
            'p' => out.push_str(if time.hour < 12 { "AM" } else { "PM" }),
            'j' => num(&mut out, i64::from(time.day_of_year), 3),
            'w' => {
                let _ = write!(out, "{}", (time.weekday + 1) % 7);
            }
            'u' => {
                let _ = write!(out, "{}", time.weekday + 1);
            }
            'f' => out.push_str("000000"),
            'z' => out.push_str("+0000"),
            'Z' => out.push_str("UTC"),
            'D' | 'x' => {
                let _ = write!(
                    out,
                    "{:02}/{:02}/{:02}",
                    time.month,
                    time.day,
                    time.year.rem_euclid(100)
                );
            }
            'F' => {
                let _ = write!(out, "{}-{:02}-{:02}", time.year, time.month, time.day);
            }
            'T' | 'X' => {
                let _ = write!(
                    out,
                    "{:02}:{:02}:{:02}",
                    time.hour, time.minute, time.second
                );
            }
            'R' => {
                let _ = write!(out, "{:02}:{:02}", time.hour, time.minute);
            }
            'c' => {
                let _ = write!(
                    out,
                    "{} {} {:>2} {:02}:{:02}:{:02} {}",
                    &weekday[..3],
                    &month[..3],
                    time.day,
                    time.hour,
                    time.minute,
                    time.second,
                    time.year
                );
            }
            'n' => out.push('\n'),
            't' => out.push('\t'),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

/// Prints values as jinja2 does, which is Python's `str()`: `None`, `True`, `1.0`, and
/// containers in their `repr()` form.
fn python_formatter(
    out: &mut minijinja::Output<'_>,
    _state: &mut State<'_, '_>,
    value: &Value,
) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::String => out
            .write_str(value.as_str().unwrap_or_default())
            .map_err(write_error),
        _ => out.write_str(&python_str(value)).map_err(write_error),
    }
}

fn write_error(err: std::fmt::Error) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::WriteFailure,
        "cannot write the rendered template",
    )
    .with_source(err)
}

/// Python's `str(value)`.
fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => python_repr(value),
    }
}

/// Python's `repr(value)`.
fn python_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".to_owned(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_owned(),
        ValueKind::Number => match number_as_f64(value) {
            Some(float) if !value.is_integer() => python_float_repr(float),
            _ => value.to_string(),
        },
        ValueKind::String => python_str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = match value.try_iter() {
                Ok(iter) => iter.map(|item| python_repr(&item)).collect(),
                Err(_) => Vec::new(),
            };
            if value.is_tuple() && items.len() == 1 {
                format!("({},)", items[0])
            } else if value.is_tuple() {
                format!("({})", items.join(", "))
            } else {
                format!("[{}]", items.join(", "))
            }
        }
        ValueKind::Map => {
            let mut parts = Vec::new();
            if let Ok(keys) = value.try_iter() {
                for key in keys {
                    let item = value.get_item(&key).unwrap_or_default();
                    parts.push(format!("{}: {}", python_repr(&key), python_repr(&item)));
                }
            }
            format!("{{{}}}", parts.join(", "))
        }
        _ => value.to_string(),
    }
}

fn number_as_f64(value: &Value) -> Option<f64> {
    f64::try_from(value.clone()).ok()
}

/// Python's `repr(float)`: the shortest string that round-trips, in positional notation for
/// decimal exponents -4..16 and scientific notation (`1e+16`, `1.5e-05`) otherwise.
fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if value == 0.0 {
        return if value.is_sign_negative() {
            "-0.0"
        } else {
            "0.0"
        }
        .to_owned();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{value:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        if point <= 0 {
            let zeros = "0".repeat(point.unsigned_abs() as usize);
            format!("{sign}0.{zeros}{digits}")
        } else {
            let point = point as usize;
            if digits.len() <= point {
                format!("{sign}{digits}{}.0", "0".repeat(point - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..point], &digits[point..])
            }
        }
    } else {
        let mut mantissa = digits[..1].to_owned();
        if digits.len() > 1 {
            mantissa.push('.');
            mantissa.push_str(&digits[1..]);
        }
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.unsigned_abs())
    }
}

/// Python's `repr(str)`.
fn python_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// How `tojson` lays out its output: Python's `json.dumps` options.
struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// `tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`: the
/// filter `transformers` installs, which is Python's `json.dumps` with those arguments
/// (`sort_keys` can only be given by keyword).
fn tojson_filter(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    separators: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    // minijinja passes at most five arguments to a filter, so `sort_keys` is keyword-only here.
    let sort_keys: Option<Value> = None;
    let pick = |positional: Option<Value>, name: &str| -> Result<Option<Value>, minijinja::Error> {
        let keyword: Option<Value> = kwargs.get(name)?;
        Ok(keyword.or(positional))
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match pick(indent, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => {
            match v.as_str() {
                Some(text) => Some(text.to_owned()),
                None => {
                    let width = v.as_i64().ok_or_else(|| {
                        minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: indent must be an integer or a string",
                        )
                    })?;
                    // Python accepts any width; a real template uses 2 or 4, and a huge
                    // one would allocate without bound.
                    if width > MAX_TOJSON_INDENT {
                        return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: indent {width} is out of range (at most {MAX_TOJSON_INDENT})"),
                    ));
                    }
                    Some(" ".repeat(usize::try_from(width).unwrap_or(0)))
                }
            }
        }
    };
    let (item_separator, key_separator) = match pick(separators, "separators")? {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => (python_str(item), python_str(key)),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ => {
            let item = if indent.is_some() { "," } else { ", " };
            (item.to_owned(), ": ".to_owned())
        }
    };
    let sort_keys = pick(sort_keys, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        ensure_ascii,
        indent,
        item_separator,
        key_separator,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                let float = number_as_f64(value).unwrap_or(f64::NAN);
                if float.is_nan() {
                    out.push_str("NaN");
                } else if float.is_infinite() {
                    out.push_str(if float > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&python_float_repr(float));
                }
            }
        }
        ValueKind::String => {
            write_json_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(&style.item_separator);
                }
                write_newline_indent(out, style, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            write_newline_indent(out, style, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
                    _ => python_str(&key),
                };
                entries.push((key, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (index, (key, item)) in entries.iter().enumerate() {
                if index > 0 {
                    out.push_str(&style.item_separator);
                }
                write_newline_indent(out, style, depth + 1);
                write_json_string(out, key, style.ensure_ascii);
                out.push_str(&style.key_separator);
                write_json(out, item, style, depth + 1)?;
            }
            write_newline_indent(out, style, depth);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "tojson: a value of type {} is not JSON serializable",
                    value.kind()
                ),
            ))
        }
    }
    Ok(())
}

fn write_newline_indent(out: &mut String, style: &JsonStyle, depth: usize) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

/// A JSON string literal as Python's `json` module writes it.
fn write_json_string(out: &mut String, text: &str, ensure_ascii: bool) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile templates (they come with model files) end in a named error quickly:
    /// nested loops run out of fuel, output loops hit the output cap.
    #[test]
    fn hostile_templates_end_in_a_named_error() -> crate::Result<()> {
        let messages = [ChatMessage::user("hi")];
        let unrolled = format!(
            "{{% set s = 'xx' %}}{}{{{{ s|length }}}}",
            "{% set s = s + s %}".repeat(64)
        );
        let cases = [
            (
                "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}{% endfor %}{% endfor %}{% endfor %}",
                "fuel",
            ),
            (
                "{% for a in range(10000) %}{% for b in range(10000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}",
                "",
            ),
            // Strings doubled until memory runs out, by every route a template has:
            // a namespace across loop iterations, unrolled `set`s, macro recursion,
            // filters, and one huge repetition. Fuel pays for every byte created.
            (
                "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
                "fuel",
            ),
            (unrolled.as_str(), "fuel"),
            (
                "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('x', 64) }}",
                "fuel",
            ),
            (
                "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s|replace('x', 'xx') %}{% endfor %}{{ ns.s|length }}",
                "fuel",
            ),
            (
                "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = '%s%s'|format(ns.s, ns.s) %}{% endfor %}{{ ns.s|length }}",
                "fuel",
            ),
            ("{{ ('x' * 10**10)|length }}", ""),
            ("{{ ('x' * 10**8)|length }}", ""),
        ];
        for (source, expected) in cases {
            let t = ChatTemplate::new(source, None, None)?;
            let started = std::time::Instant::now();
            let err = t.render(&messages, true).unwrap_err().to_string();
            assert!(err.contains(expected), "{source}: {err}");
            assert!(
                err.contains("fuel") || err.contains("output passed") || err.contains("too large"),
                "{source}: {err}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{source}"
            );
        }
        // A real template is far inside the budget.
        let t = ChatTemplate::new(
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}",
            None,
            None,
        )?;
        assert_eq!(t.render(&messages, false)?, "<|user|>hi");
        Ok(())
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (3.25, "3.25"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345.0, "123456789012345.0"),
            (-2.5, "-2.5"),
            (1e22, "1e+22"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value}");
        }
    }

    #[test]
    fn generation_tags_become_if_blocks() {
        assert_eq!(
            rewrite_generation_tags(
                "a{%- generation %}b{% endgeneration -%}c{% if x %}{% endif %}"
            ),
            "a{%- if true %}b{% endif -%}c{% if x %}{% endif %}"
        );
        assert_eq!(
            rewrite_generation_tags("{% generations %}"),
            "{% generations %}"
        );
    }

    #[test]
    fn civil_time_matches_known_dates() {
        // 2024-07-26 00:00:00 UTC, a Friday, day 208 of a leap year.
        let t = CivilTime::from_unix(1_721_952_000);
        assert_eq!(
            (t.year, t.month, t.day, t.weekday, t.day_of_year),
            (2024, 7, 26, 4, 208)
        );
        assert_eq!(strftime("%d %b %Y", &t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %-d %B %y %H:%M:%S %j %%", &t),
            "Friday 26 July 24 00:00:00 208 %"
        );
        let t = CivilTime::from_unix(0);
        assert_eq!(strftime("%Y-%m-%d %a", &t), "1970-01-01 Thu");
    }
}
