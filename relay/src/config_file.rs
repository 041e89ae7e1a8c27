//! `--config FILE`: a TOML file whose keys are the long option names of the subcommand that
//! takes `--config` (`lease = "6s"`, `metrics-address = "127.0.0.1:9187"`, flags as
//! `true`/`false`).
//!
//! Precedence: command-line flag > environment variable > file > built-in default. The file is
//! a source below clap's own: the command line is parsed first, and every file key whose option
//! was neither given on the command line nor by its environment variable is added as if given,
//! then the whole is parsed again. Nothing here names an option: a new option of the subcommand
//! is a file key as soon as it exists, checked by its own value parser.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::Path;

/// The id (and long name) of the option that names the file.
pub const CONFIG_ARG: &str = "config";

/// The parsed command line, and where each setting came from.
pub struct Parsed<C> {
    pub cli: C,
    pub settings: Settings,
}

/// Why the command line or the file was refused.
#[derive(Debug)]
pub enum Error {
    /// As clap reports it (also `--help` and `--version`, which are not failures), shown with
    /// the values of secret settings masked: clap quotes the arguments it refuses, and one of
    /// them may be the database URL (from the command line, or from the file after a stray
    /// `--`).
    Clap(clap::Error, Masks),
    /// The file: unreadable, not TOML, an unknown key or a bad value. The message names the
    /// file and the key; it never shows the value of an option whose env value is hidden.
    File(String),
}

/// Usage errors (clap's and the file's) exit with this code, like clap's own.
pub const USAGE_EXIT_CODE: i32 = 2;

impl Error {
    /// Print the error (or the help) and exit: 2 for a bad command line or file, 0 for
    /// `--help` / `--version`.
    pub fn exit(self) -> ! {
        match self {
            Error::Clap(error, masks) => {
                let text = masks.apply(&error.render().to_string());
                if error.use_stderr() {
                    eprint!("{text}");
                } else {
                    print!("{text}");
                }
                std::process::exit(error.exit_code())
            }
            Error::File(message) => {
                eprintln!("ae-relay: {}", mask_url_passwords(&message));
                std::process::exit(USAGE_EXIT_CODE)
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Clap(error, masks) => f.write_str(&masks.apply(&error.to_string())),
            Error::File(message) => f.write_str(&mask_url_passwords(message)),
        }
    }
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
    Unset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
            Source::Unset => "unset",
        })
    }
}

/// The effective settings of the subcommand, for the log at start: `name=value (source)`;
/// values of options whose env value is hidden (the database URL) are never shown.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub entries: Vec<(String, Option<String>, Source)>,
}

impl Settings {
    pub fn source(&self, name: &str) -> Option<Source> {
        self.entries
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, source)| *source)
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value, source)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match value {
                Some(value) => write!(f, "{name}={value} ({source})")?,
                None => write!(f, "{name} ({source})")?,
            }
        }
        Ok(())
    }
}

/// Parse the process's arguments.
pub fn parse<C: CommandFactory + FromArgMatches>() -> Result<Parsed<C>, Error> {
    parse_from(std::env::args_os())
}

/// Parse `args` (the program name first), adding the values of the file named by the
/// subcommand's `--config` where the command line and the environment say nothing.
pub fn parse_from<C, I, T>(args: I) -> Result<Parsed<C>, Error>
where
    C: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    parse_args::<C>(args.clone()).map_err(|error| match error {
        Error::Clap(error, _) => Error::Clap(error, Masks::collect(&C::command(), &args)),
        other => other,
    })
}

fn clap_error(error: clap::Error) -> Error {
    Error::Clap(error, Masks::default())
}

fn parse_args<C: CommandFactory + FromArgMatches>(
    mut args: Vec<OsString>,
) -> Result<Parsed<C>, Error> {
    let mut command = C::command();
    command.build();
    let first = match command.clone().try_get_matches_from(&args) {
        Ok(matches) => matches,
        // A required option (the database URL) may be in the file: read that first; the
        // final parse below reports it if it is missing everywhere.
        Err(error) if error.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            let relaxed = relax(C::command());
            relaxed.try_get_matches_from(&args).map_err(clap_error)?
        }
        Err(error) => return Err(clap_error(error)),
    };
    let mut from_file = BTreeSet::new();
    let mut subcommand_name = None;
    if let Some((name, sub_matches)) = first.subcommand() {
        subcommand_name = Some(name.to_owned());
        if let Some(sub) = command.find_subcommand(name) {
            if let Some(path) = config_path(sub, sub_matches) {
                let (extra, keys) = file_arguments(sub, sub_matches, &path)?;
                // Before a `--`, if any: after it they would be positional arguments (refused,
                // and quoted in the refusal).
                let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
                args.splice(at..at, extra);
                from_file = keys;
            }
        }
    }
    let mut command = C::command();
    let matches = command
        .try_get_matches_from_mut(&args)
        .map_err(clap_error)?;
    let cli = C::from_arg_matches(&matches).map_err(clap_error)?;
    command.build();
    let settings = match subcommand_name.as_deref().and_then(|name| {
        Some((
            command.find_subcommand(name)?,
            matches.subcommand_matches(name)?,
        ))
    }) {
        Some((sub, sub_matches)) => settings(sub, sub_matches, &from_file),
        None => Settings::default(),
    };
    Ok(Parsed { cli, settings })
}

/// The same command with no option required (for the first look at the command line).
fn relax(command: Command) -> Command {
    let command = command.mut_args(|arg| arg.required(false));
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    names.into_iter().fold(command, |command, name| {
        command.mut_subcommand(name, |sub| sub.mut_args(|arg| arg.required(false)))
    })
}

fn config_path(sub: &Command, matches: &ArgMatches) -> Option<OsString> {
    sub.get_arguments().find(|arg| arg.get_id() == CONFIG_ARG)?;
    let mut raw = matches.try_get_raw(CONFIG_ARG).ok()??;
    raw.next().map(OsStr::to_owned)
}

/// The values of secret settings (the database URL) wherever they may come from, for masking
/// error texts: the command line, the environment and the configuration file.
#[derive(Debug, Default)]
pub struct Masks(Vec<String>);

/// What a masked value shows as.
const HIDDEN: &str = "(hidden)";

impl Masks {
    fn collect(command: &Command, args: &[OsString]) -> Masks {
        let mut values = Vec::new();
        let commands: Vec<&Command> = std::iter::once(command)
            .chain(command.get_subcommands())
            .collect();
        // The configuration files named on the command line or by the environment.
        let mut files: Vec<OsString> = Vec::new();
        for command in &commands {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let named = arguments_of(args, long);
                if arg.get_id() == CONFIG_ARG {
                    files.extend(named.into_iter().map(OsString::from));
                    if let Some(env) = arg.get_env().and_then(std::env::var_os) {
                        files.push(env);
                    }
                } else if is_secret(arg) {
                    values.extend(named);
                    if let Some(env) = arg.get_env().and_then(std::env::var_os) {
                        values.push(env.to_string_lossy().into_owned());
                    }
                }
            }
        }
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let Ok(table) = text.parse::<toml::Table>() else {
                continue;
            };
            for command in &commands {
                for arg in command.get_arguments().filter(|arg| is_secret(arg)) {
                    if let Some(toml::Value::String(value)) =
                        arg.get_long().and_then(|long| table.get(long))
                    {
                        values.push(value.clone());
                    }
                }
            }
        }
        // A URL's password alone too (a message may quote a part of it).
        let passwords: Vec<String> = values.iter().filter_map(|v| url_password(v)).collect();
        values.extend(passwords);
        values.retain(|value| value.len() >= 4);
        values.sort_by_key(|value| std::cmp::Reverse(value.len()));
        values.dedup();
        Masks(values)
    }

    /// The text with every secret value, and every URL's password, masked.
    pub fn apply(&self, text: &str) -> String {
        let mut masked = text.to_owned();
        for value in &self.0 {
            if masked.contains(value.as_str()) {
                masked = masked.replace(value.as_str(), HIDDEN);
            }
        }
        mask_url_passwords(&masked)
    }
}

/// The values given to `--long` in `args` (`--long value` and `--long=value`).
fn arguments_of(args: &[OsString], long: &str) -> Vec<String> {
    let flag = format!("--{long}");
    let with_equals = format!("--{long}=");
    let mut values = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let arg = arg.to_string_lossy();
        if arg == flag {
            if let Some(next) = args.get(i + 1) {
                values.push(next.to_string_lossy().into_owned());
            }
        } else if let Some(value) = arg.strip_prefix(&with_equals) {
            values.push(value.to_owned());
        }
    }
    values
}

/// The password of a `scheme://user:password@host` URL.
fn url_password(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Every `scheme://user:password@` in the text with its password masked, and every
/// `password=...` of a connection string, whatever the value came from.
pub fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || "/?#'\"`".contains(c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split(':').next().unwrap_or("");
                out.push_str(user);
                out.push(':');
                out.push_str(HIDDEN);
                out.push('@');
                out.push_str(host);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    // Key/value connection strings: password=secret (quoted or not).
    let mut masked = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("password=") {
        let (before, after) = rest.split_at(at + "password=".len());
        masked.push_str(before);
        let end = if let Some(quoted) = after.strip_prefix('\'') {
            quoted.find('\'').map_or(after.len(), |i| i + 2)
        } else {
            after
                .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                .unwrap_or(after.len())
        };
        masked.push_str(HIDDEN);
        rest = &after[end..];
    }
    masked.push_str(rest);
    masked
}

/// Options that are not settings.
fn is_setting(arg: &Arg) -> bool {
    !matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    ) && arg.get_id() != CONFIG_ARG
        && arg.get_long().is_some()
}

/// A value that must not be shown (the database URL holds the password): clap's own
/// `hide_env_values` marks them.
fn is_secret(arg: &Arg) -> bool {
    arg.is_hide_env_values_set()
}

/// The file's settings as command-line arguments, for the options that the command line and
/// the environment leave alone; and the keys that take effect.
fn file_arguments(
    sub: &Command,
    matches: &ArgMatches,
    path: &OsStr,
) -> Result<(Vec<OsString>, BTreeSet<String>), Error> {
    let shown = Path::new(path).display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        Error::File(format!(
            "cannot read the configuration file {shown}: {error}"
        ))
    })?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        // toml's own message and position, without its quote of the line: that line may hold
        // the database password.
        let position = error
            .span()
            .map(|span| {
                let before = text.get(..span.start).unwrap_or(&text);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        Error::File(format!(
            "{shown} is not valid TOML{position}: {}",
            error.message().trim()
        ))
    })?;
    let checker = sub.clone().mut_args(|arg| arg.required(false));
    let mut arguments = Vec::new();
    let mut keys = BTreeSet::new();
    for (key, value) in &table {
        let Some(arg) = sub
            .get_arguments()
            .find(|arg| is_setting(arg) && arg.get_long() == Some(key.as_str()))
        else {
            let dashed = key.replace('_', "-");
            let why = if key == CONFIG_ARG {
                "a configuration file cannot name another".to_owned()
            } else if dashed != *key
                && sub
                    .get_arguments()
                    .any(|arg| is_setting(arg) && arg.get_long() == Some(dashed.as_str()))
            {
                format!("the keys are the long option names, with dashes: `{dashed}`")
            } else {
                format!(
                    "the keys are the long options of `ae-relay {}` (see its --help)",
                    sub.get_name()
                )
            };
            return Err(Error::File(format!("{shown}: unknown key `{key}`: {why}")));
        };
        let pieces = as_arguments(&checker, arg, key, value)
            .map_err(|why| Error::File(format!("{shown}: key `{key}`: {why}")))?;
        // Checked even when overridden: a bad file is refused whatever else is given.
        let overridden = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !overridden {
            arguments.extend(pieces);
            keys.insert(key.clone());
        }
    }
    Ok((arguments, keys))
}

/// One file value as the command-line arguments that say the same, each value checked by the
/// option's own parser.
fn as_arguments(
    checker: &Command,
    arg: &Arg,
    key: &str,
    value: &toml::Value,
) -> Result<Vec<OsString>, String> {
    let flag = OsString::from(format!("--{key}"));
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let toml::Value::Boolean(on) = value else {
                return Err(format!(
                    "expected true or false, found {}",
                    value.type_str()
                ));
            };
            // The flag's presence sets the opposite of its default.
            let present = *on == matches!(arg.get_action(), ArgAction::SetTrue);
            Ok(if present { vec![flag] } else { Vec::new() })
        }
        ArgAction::Count => match value {
            toml::Value::Integer(n) if *n >= 0 => Ok(vec![flag; *n as usize]),
            _ => Err("expected a count (0 or more)".to_owned()),
        },
        action => {
            let values: Vec<&toml::Value> = match value {
                toml::Value::Array(items) if matches!(action, ArgAction::Append) => {
                    items.iter().collect()
                }
                toml::Value::Array(_) => return Err("takes one value, not a list".to_owned()),
                other => vec![other],
            };
            let mut arguments = Vec::new();
            for value in values {
                let text = scalar(value)?;
                check(checker, arg, key, &text)?;
                let mut argument = flag.clone();
                argument.push("=");
                argument.push(&text);
                arguments.push(argument);
            }
            Ok(arguments)
        }
    }
}

/// A TOML scalar as the text the command line would carry.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        other => Err(format!("expected a value, found {}", other.type_str())),
    }
}

/// Run the option's value parser on the text, explaining a refusal without clap's usage lines.
/// (clap keeps its value parsers' entry point to itself: the text is parsed as the option's
/// only argument to `checker`, the subcommand with nothing required; errors about other
/// options are the final parse's business.)
fn check(checker: &Command, arg: &Arg, key: &str, text: &str) -> Result<(), String> {
    let Err(error) = checker
        .clone()
        .try_get_matches_from([OsString::from(checker.get_name()), {
            let mut argument = OsString::from(format!("--{key}="));
            argument.push(text);
            argument
        }])
    else {
        return Ok(());
    };
    use clap::error::ErrorKind;
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue
            | ErrorKind::ValueValidation
            | ErrorKind::InvalidUtf8
            | ErrorKind::WrongNumberOfValues
            | ErrorKind::TooManyValues
            | ErrorKind::NoEquals
    ) {
        return Ok(());
    }
    let shown = if is_secret(arg) {
        "(not shown)".to_owned()
    } else {
        format!("{text:?}")
    };
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_owned())
        .collect();
    let why = if let Some(cause) = std::error::Error::source(&error) {
        cause.to_string()
    } else if !possible.is_empty() {
        format!("expected one of: {}", possible.join(", "))
    } else if is_secret(arg) {
        "not accepted".to_owned()
    } else {
        // clap's first line, without its "error: " and its hints.
        let rendered = error.render().to_string();
        rendered
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_owned()
    };
    Err(format!("invalid value {shown}: {why}"))
}

/// Every setting of the subcommand with its effective value and source.
fn settings(sub: &Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> Settings {
    let mut entries = Vec::new();
    for arg in sub
        .get_arguments()
        .filter(|arg| is_setting(arg) || arg.get_id() == CONFIG_ARG)
    {
        let Some(long) = arg.get_long() else { continue };
        let id = arg.get_id().as_str();
        let source = if from_file.contains(long) {
            Source::File
        } else {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env,
                Some(ValueSource::DefaultValue) => Source::Default,
                _ => Source::Unset,
            }
        };
        let value = match matches.try_get_raw(id) {
            Ok(Some(raw)) if is_secret(arg) => {
                let _ = raw;
                Some("(hidden)".to_owned())
            }
            Ok(Some(raw)) => Some(
                raw.map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        };
        entries.push((long.to_owned(), value, source));
    }
    Settings { entries }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser, Debug)]
    struct Cli {
        #[arg(long, global = true, default_value = "human")]
        log_format: String,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        Run {
            #[arg(long, env = "CONFIG_FILE_TEST_SECRET", hide_env_values = true)]
            secret: String,
            #[arg(long, default_value_t = 3)]
            count: u32,
            #[arg(long, env = "CONFIG_FILE_TEST_NAME", default_value = "a")]
            name: String,
            #[arg(long)]
            on: bool,
            #[arg(long)]
            config: Option<std::path::PathBuf>,
        },
    }

    fn file(text: &str) -> tempfile_path::Path {
        tempfile_path::Path::new(text)
    }

    /// A file removed when dropped (no tempfile crate needed for this).
    mod tempfile_path {
        pub struct Path(pub std::path::PathBuf);
        impl Path {
            pub fn new(text: &str) -> Path {
                use std::sync::atomic::{AtomicU32, Ordering};
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "ae-relay-config-unit-{}-{}.toml",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::write(&path, text).unwrap();
                Path(path)
            }
            pub fn arg(&self) -> String {
                self.0.display().to_string()
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn run(args: &[&str]) -> Result<Parsed<Cli>, Error> {
        parse_from::<Cli, _, _>(std::iter::once("ae-relay").chain(args.iter().copied()))
    }

    fn fields(parsed: &Parsed<Cli>) -> (String, u32, String, bool, String) {
        let Sub::Run {
            secret,
            count,
            name,
            on,
            ..
        } = &parsed.cli.command;
        (
            secret.clone(),
            *count,
            name.clone(),
            *on,
            parsed.cli.log_format.clone(),
        )
    }

    #[test]
    fn the_file_fills_what_the_command_line_leaves() {
        let f = file("secret = \"s3cret\"\ncount = 7\non = true\nlog-format = \"json\"\n");
        let parsed = run(&["run", "--config", &f.arg()]).unwrap();
        assert_eq!(
            fields(&parsed),
            ("s3cret".into(), 7, "a".into(), true, "json".into())
        );
        assert_eq!(parsed.settings.source("count"), Some(Source::File));
        assert_eq!(parsed.settings.source("name"), Some(Source::Default));
        let shown = parsed.settings.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("count=7 (file)"), "{shown}");
        assert!(shown.contains("log-format=json (file)"), "{shown}");
        // The command line wins.
        let parsed = run(&["run", "--config", &f.arg(), "--count", "9"]).unwrap();
        assert_eq!(fields(&parsed).1, 9);
        assert_eq!(parsed.settings.source("count"), Some(Source::Flag));
        let parsed = run(&["--log-format", "text", "run", "--config", &f.arg()]).unwrap();
        assert_eq!(fields(&parsed).4, "text");
    }

    #[test]
    fn bad_files_are_refused_naming_the_key() {
        let f = file("secret = \"x\"\ncount = \"many\"\n");
        let error = run(&["run", "--config", &f.arg()])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("key `count`"), "{error}");
        assert!(error.contains("\"many\""), "{error}");
        assert!(error.contains(&f.arg()), "{error}");
        let f = file("secret = \"x\"\ncolour = \"blue\"\n");
        let error = run(&["run", "--config", &f.arg()])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("unknown key `colour`"), "{error}");
        let f = file("secret = \"x\"\nlog_format = \"json\"\n");
        let error = run(&["run", "--config", &f.arg()])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("unknown key `log_format`"), "{error}");
        assert!(error.contains("with dashes: `log-format`"), "{error}");
        let f = file("secret = \"x\"\non = \"yes\"\n");
        let error = run(&["run", "--config", &f.arg()])
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("key `on`: expected true or false"),
            "{error}"
        );
        let f = file("secret = \"hunter2\nextra = 1\n");
        let error = run(&["run", "--config", &f.arg()])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("is not valid TOML at line 1"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = run(&[
            "run",
            "--config",
            "/nonexistent/ae-relay.toml",
            "--secret",
            "x",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("cannot read the configuration file /nonexistent/ae-relay.toml"));
        // Still refused when a flag overrides the bad value.
        let f = file("secret = \"x\"\ncount = -1\n");
        assert!(run(&["run", "--config", &f.arg(), "--count", "2"]).is_err());
    }

    #[test]
    fn refusals_never_show_a_secret_value() {
        let f = file("secret = \"s3cret-value\"\n");
        // A stray `--`: the file's values go before it, not after as positional arguments.
        let parsed = run(&["run", "--config", &f.arg(), "--"]).unwrap();
        assert_eq!(fields(&parsed).0, "s3cret-value");
        let path = f.arg();
        let cases: Vec<Vec<&str>> = vec![
            vec!["run", "--config", &path, "--", "extra"],
            vec!["run", "--config", &path, "--", "--secret=s3cret-value"],
            vec!["run", "--secret", "s3cret-value", "--bogus"],
            vec!["run", "--secret=s3cret-value", "stray"],
            vec!["run", "--secret", "s3cret-value", "--", "s3cret-value"],
            vec!["run", "--config", &path, "--count", "x"],
            vec!["run", "--secrett=postgres://u:s3cret@h/db"],
            vec!["run", "--secret=x", "postgres://u:s3cret@h/db"],
            vec!["run", "--secret=x", "host=h password=s3cret"],
            vec!["run", "--secret=x", "--count"],
        ];
        for args in cases {
            let error = run(&args).err().expect("refused");
            let shown = error.to_string();
            assert!(!shown.contains("s3cret"), "{args:?}: {shown}");
        }
        assert_eq!(
            mask_url_passwords("at postgres://u:pw@h:5432/db and 'x://a:b@c' password=z y"),
            "at postgres://u:(hidden)@h:5432/db and 'x://a:(hidden)@c' password=(hidden) y"
        );
    }

    #[test]
    fn a_required_option_may_come_from_the_file_only() {
        let f = file("count = 1\n");
        match run(&["run", "--config", &f.arg()]) {
            Err(Error::Clap(error, _)) => assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument
            ),
            other => panic!("{:?}", other.map(|p| p.settings)),
        }
        let f = file("secret = \"x\"\n");
        assert_eq!(fields(&run(&["run", "--config", &f.arg()]).unwrap()).0, "x");
    }
}
