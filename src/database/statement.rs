//! An operator's (or Switchboard's own) SQL text with its parameters found once, written the
//! same way for both databases: `?` positional or `:name` named (never both in one text).
//! MySQL gets `?` for each, PostgreSQL `$1…` (a name used twice is one `$n`): the one place
//! where the placeholder syntax is translated.
//!
//! The lexer follows MySQL's reading, as mysql_common's did before: `'…'` and `"…"` with
//! backslash escapes, `` `…` `` identifiers, `--`, `#` and `/* */` comments. `::` (PostgreSQL's
//! cast) is no parameter. A text that PostgreSQL reads otherwise (a string ending in a
//! backslash, `#` as XOR, dollar quoting, the jsonb `?` operator) gets a parameter count the
//! server refuses: an error, never a value in the wrong place.

use super::Dialect;

/// A parsed statement: its text for each dialect and where each argument goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// With `?` for every parameter.
    mysql: String,
    /// With `$n` for every parameter.
    postgres: String,
    /// For each `?` of `mysql`, the argument it takes (the `n - 1` of its `$n`).
    slots: Vec<usize>,
    /// The distinct names, in `$n` order; empty for positional statements.
    names: Vec<String>,
}

/// What the lexer is inside of.
#[derive(Clone, Copy)]
enum State {
    Code,
    Quoted(char),
    Escape(char),
    LineComment,
    BlockComment,
    /// The `*` of a closing `*/`.
    BlockEnd,
}

impl Statement {
    /// Finds the parameters of `text`; fails when it mixes `?` and `:name`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut mysql = String::with_capacity(text.len());
        let mut postgres = String::with_capacity(text.len() + 8);
        let (mut slots, mut names) = (Vec::new(), Vec::<String>::new());
        let (mut positional, mut named) = (false, false);
        let mut state = State::Code;
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            state = match state {
                State::Quoted(quote) if c == quote => State::Code,
                State::Quoted(quote) if c == '\\' => State::Escape(quote),
                State::Escape(quote) => State::Quoted(quote),
                State::LineComment if c == '\n' => State::Code,
                State::BlockComment if c == '*' && chars.peek().is_some_and(|(_, n)| *n == '/') => {
                    State::BlockEnd
                }
                State::BlockEnd => State::Code,
                State::Code => match c {
                    '\'' | '"' | '`' => State::Quoted(c),
                    '#' => State::LineComment,
                    '-' | '/' => {
                        let next = chars.peek().map(|(_, n)| *n);
                        match (c, next) {
                            ('-', Some('-')) => State::LineComment,
                            ('/', Some('*')) => State::BlockComment,
                            _ => State::Code,
                        }
                    }
                    '?' => {
                        positional = true;
                        slots.push(slots.len());
                        mysql.push('?');
                        postgres.push_str(&format!("${}", slots.len()));
                        continue;
                    }
                    ':' if chars.peek().is_some_and(|(_, n)| *n == ':') => {
                        // A cast (`x::text`): both colons are code.
                        chars.next();
                        mysql.push_str("::");
                        postgres.push_str("::");
                        continue;
                    }
                    ':' if chars
                        .peek()
                        .is_some_and(|(_, n)| n.is_ascii_lowercase() || *n == '_') =>
                    {
                        let start = at + 1;
                        let mut end = start;
                        while let Some((i, n)) = chars.peek().copied() {
                            if !(n.is_ascii_lowercase() || n.is_ascii_digit() || n == '_') {
                                break;
                            }
                            end = i + n.len_utf8();
                            chars.next();
                        }
                        let name = &text[start..end];
                        named = true;
                        let slot = match names.iter().position(|n| n == name) {
                            Some(slot) => slot,
                            None => {
                                names.push(name.to_owned());
                                names.len() - 1
                            }
                        };
                        slots.push(slot);
                        mysql.push('?');
                        postgres.push_str(&format!("${}", slot + 1));
                        continue;
                    }
                    _ => State::Code,
                },
                other => other,
            };
            mysql.push(c);
            postgres.push(c);
        }
        if positional && named {
            return Err("mixes `?` and `:name` parameters; use one kind".into());
        }
        Ok(Self {
            mysql,
            postgres,
            slots,
            names,
        })
    }

    /// The text to send to a database of `dialect`.
    pub fn text(&self, dialect: Dialect) -> &str {
        match dialect {
            Dialect::MySql => &self.mysql,
            Dialect::Postgres => &self.postgres,
        }
    }

    /// The distinct `:name`s, in the order their arguments are given; empty for `?`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// How many arguments it takes: one per `?`, or one per distinct name.
    pub fn arity(&self) -> usize {
        if self.names.is_empty() {
            self.slots.len()
        } else {
            self.names.len()
        }
    }

    /// For MySQL's `?`s in order, which argument each one takes.
    pub(super) fn slots(&self) -> &[usize] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Statement {
        Statement::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn positional_marks_become_numbered_for_postgres() {
        let s = parse("SELECT id FROM users WHERE role = ? AND sector_id = ?");
        assert_eq!(
            s.text(Dialect::Postgres),
            "SELECT id FROM users WHERE role = $1 AND sector_id = $2"
        );
        assert_eq!(
            s.text(Dialect::MySql),
            "SELECT id FROM users WHERE role = ? AND sector_id = ?"
        );
        assert_eq!((s.arity(), s.slots()), (2, &[0, 1][..]));
        assert!(s.names().is_empty());
    }

    #[test]
    fn names_are_bound_once_each_in_order_of_first_use() {
        let s = parse("SELECT 1 FROM t WHERE a = :user_id AND b = :id AND c = :user_id");
        assert_eq!(
            s.text(Dialect::Postgres),
            "SELECT 1 FROM t WHERE a = $1 AND b = $2 AND c = $1"
        );
        assert_eq!(
            s.text(Dialect::MySql),
            "SELECT 1 FROM t WHERE a = ? AND b = ? AND c = ?"
        );
        assert_eq!(s.names(), ["user_id", "id"]);
        assert_eq!((s.arity(), s.slots()), (2, &[0, 1, 0][..]));
    }

    #[test]
    fn strings_comments_and_casts_hold_no_parameters() {
        let text = "SELECT ':id', \"?\", `:x`, 'it\\'s ?' /* :other ? */ FROM t -- :y ?\n\
                    WHERE a = :user_id::bigint # :z\nAND b = 'x''?'";
        let s = parse(text);
        assert_eq!(s.names(), ["user_id"]);
        assert_eq!(s.arity(), 1);
        assert!(s.text(Dialect::Postgres).contains("a = $1::bigint # :z"));
        assert!(s.text(Dialect::Postgres).ends_with("b = 'x''?'"));
        // Untouched besides the parameter.
        assert_eq!(s.text(Dialect::MySql), text.replace(":user_id", "?"));
    }

    #[test]
    fn mixed_kinds_are_refused() {
        assert!(Statement::parse("SELECT ? AND :id").is_err());
        assert_eq!(parse("SELECT 1").arity(), 0);
        // Upper-case after a colon is no name (MySQL's rule), nor is a bare colon.
        assert_eq!(parse("SELECT ':' , a:B").arity(), 0);
    }
}
