//! Attribute parsing shared by the three derives.
//!
//! Every problem is recorded in a [`Ctxt`] instead of returning early, so that one
//! expansion reports all mistakes at once (like serde_derive's `Ctxt`).

use std::cell::RefCell;
use std::fmt::Display;
use std::str::FromStr;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::ParseStream;
use syn::parse::discouraged::Speculative;
use syn::{Attribute, Ident, Lit, LitInt, LitStr, Meta, Path, Token, Type};

/// Collects errors so that one expansion reports all of them.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records an error spanning `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.errors
            .borrow_mut()
            .push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error produced by syn.
    pub(crate) fn syn_error(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    /// All recorded errors combined into one, or `Ok` if there were none.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_inner().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

/// What a key's value must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// A string literal: `name = "placed"`.
    Str,
    /// A positive integer literal: `version = 2`.
    Int,
    /// A type: `aggregate = Order`.
    Type,
    /// A path written as a string literal: `crate = "tb"`.
    Path,
    /// Types in parentheses, without `=`: `commands(PlaceOrder, orders::Cancel)`.
    TypeList,
}

/// One key an attribute accepts.
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// How to write it, shown in error messages: `version = 2`.
    pub(crate) example: &'static str,
}

/// The keys one attribute accepts at one place (container, variant or field).
pub(crate) struct Schema {
    /// The attribute's name: `event`.
    pub(crate) attr: &'static str,
    /// Where it is, for messages: `the enum`, `a variant`.
    pub(crate) place: &'static str,
    pub(crate) keys: &'static [Key],
    /// Keys that belong to the same attribute elsewhere, with a hint where to put them.
    pub(crate) misplaced: &'static [(&'static str, &'static str)],
}

impl Schema {
    fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// `` `aggregate` and `crate` `` for messages.
    fn key_list(&self) -> String {
        let names: Vec<String> = self.keys.iter().map(|k| format!("`{}`", k.name)).collect();
        match names.split_last() {
            None => String::new(),
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        }
    }
}

/// A value as written, before it is checked against the key's [`Kind`].
pub(crate) enum Value {
    Lit(Lit),
    Type(Type),
    /// The items of a `key(A, B)` list: the types, and the tokens of any item that
    /// is not a type (reported when the list is read).
    List(Vec<Result<Type, TokenStream>>),
    /// Anything else (`-1`, `a + b`), kept for the error's span.
    Other(TokenStream),
}

impl ToTokens for Value {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Value::Lit(lit) => lit.to_tokens(tokens),
            Value::Type(ty) => ty.to_tokens(tokens),
            Value::List(items) => {
                let items = items.iter().map(|item| match item {
                    Ok(ty) => ty.to_token_stream(),
                    Err(other) => other.clone(),
                });
                tokens.extend(quote::quote!((#(#items),*)));
            }
            Value::Other(other) => other.to_tokens(tokens),
        }
    }
}

struct Entry {
    spec: &'static Key,
    value: Value,
}

/// The `key = value` entries of every `#[attr(...)]` on one item.
pub(crate) struct Attrs<'a> {
    cx: &'a Ctxt,
    schema: &'static Schema,
    entries: Vec<Entry>,
    /// The first matching attribute, to point at when a required key is missing.
    first: Option<&'a Attribute>,
    /// Keys suggested for unknown keys (`nmae` → `name`): not reported again as missing.
    suggested: Vec<&'static str>,
}

impl<'a> Attrs<'a> {
    /// Parses every `#[{schema.attr}(...)]` in `attrs`, recording problems in `cx`.
    pub(crate) fn parse(cx: &'a Ctxt, schema: &'static Schema, attrs: &'a [Attribute]) -> Self {
        let mut this = Attrs {
            cx,
            schema,
            entries: Vec::new(),
            first: None,
            suggested: Vec::new(),
        };
        for attr in attrs.iter().filter(|a| a.path().is_ident(schema.attr)) {
            this.first.get_or_insert(attr);
            this.parse_one(attr);
        }
        this
    }

    fn parse_one(&mut self, attr: &Attribute) {
        let schema = self.schema;
        let example = schema.keys.first().map_or("", |k| k.example);
        match &attr.meta {
            Meta::List(list) => {
                let result = list.parse_args_with(|input: ParseStream<'_>| {
                    self.parse_entries(input);
                    Ok(())
                });
                if let Err(error) = result {
                    self.cx.syn_error(error);
                }
            }
            Meta::Path(_) | Meta::NameValue(_) => self.cx.error_spanned_by(
                attr,
                format_args!(
                    "expected `#[{}(...)]` with `key = value` entries, e.g. `#[{}({example})]`",
                    schema.attr, schema.attr
                ),
            ),
        }
    }

    fn parse_entries(&mut self, input: ParseStream<'_>) {
        while !input.is_empty() {
            self.parse_entry(input);
            if input.is_empty() {
                break;
            }
            if input.peek(Token![,]) {
                let _ = input.parse::<Token![,]>();
            } else {
                let rest = skip_to_comma(input);
                let attr = self.schema.attr;
                self.cx.error_spanned_by(
                    rest,
                    format_args!(
                        "expected `,` between entries: `#[{attr}(key = value, key = value)]`"
                    ),
                );
            }
        }
    }

    fn parse_entry(&mut self, input: ParseStream<'_>) {
        let schema = self.schema;
        if !input.peek(Ident::peek_any) {
            let rest = skip_to_comma(input);
            self.cx.error_spanned_by(
                rest,
                format_args!(
                    "expected `key = value`; the keys of `#[{}(...)]` on {} are {}",
                    schema.attr,
                    schema.place,
                    schema.key_list()
                ),
            );
            return;
        }
        let Ok(key) = input.call(Ident::parse_any) else {
            return;
        };
        let key_name = key.unraw().to_string();
        let spec = schema.key(&key_name);

        let value = if spec.is_some_and(|spec| spec.kind == Kind::TypeList)
            && input.peek(syn::token::Paren)
        {
            match parse_list(input) {
                Ok(items) => Some(Value::List(items)),
                Err(error) => {
                    self.cx.syn_error(error);
                    return;
                }
            }
        } else if input.peek(Token![=]) {
            let _ = input.parse::<Token![=]>();
            if input.is_empty() || input.peek(Token![,]) {
                None
            } else {
                Some(parse_value(input))
            }
        } else {
            // `version`, `version(2)`, `version 2`: the value is missing.
            let rest = skip_to_comma(input);
            if let Some(spec) = spec {
                let mut tokens = key.to_token_stream();
                tokens.extend(rest);
                self.cx.error_spanned_by(
                    tokens,
                    format_args!("`{key_name}` needs a value: write `{}`", spec.example),
                );
                return;
            }
            None
        };

        let Some(spec) = spec else {
            self.unknown_key(&key, &key_name);
            return;
        };
        let Some(value) = value else {
            self.cx.error_spanned_by(
                &key,
                format_args!("`{key_name}` needs a value: write `{}`", spec.example),
            );
            return;
        };
        if let Some(first) = self.entries.iter().find(|e| e.spec.name == spec.name) {
            let first_value = first.value.to_token_stream().to_string();
            self.cx.error_spanned_by(
                &key,
                format_args!(
                    "duplicate key `{key_name}`: it is already set to `{first_value}` on {}; \
                     remove one of them",
                    schema.place
                ),
            );
            return;
        }
        self.entries.push(Entry { spec, value });
    }

    fn unknown_key(&mut self, key: &Ident, key_name: &str) {
        let schema = self.schema;
        let mut message = format!(
            "unknown key `{key_name}` in `#[{}(...)]` on {}",
            schema.attr, schema.place
        );
        if let Some((_, hint)) = schema.misplaced.iter().find(|(name, _)| *name == key_name) {
            message.push_str(": ");
            message.push_str(hint);
        } else if let Some(suggestion) = closest(key_name, schema.keys.iter().map(|k| k.name)) {
            message.push_str(&format!("; did you mean `{suggestion}`?"));
            self.suggested.push(suggestion);
        } else {
            message.push_str(&format!("; the keys here are {}", schema.key_list()));
        }
        self.cx.error_spanned_by(key, message);
    }

    /// Whether an unknown key was reported with `name` as the suggested fix.
    pub(crate) fn was_suggested(&self, name: &str) -> bool {
        self.suggested.contains(&name)
    }

    /// Whether no `#[attr(...)]` was found at all.
    pub(crate) fn is_absent(&self) -> bool {
        self.first.is_none()
    }

    /// The first attribute, if any, for errors about missing keys.
    pub(crate) fn first_attr(&self) -> Option<&'a Attribute> {
        self.first
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        debug_assert!(
            self.schema.key(name).is_some(),
            "key `{name}` not in schema"
        );
        self.entries.iter().find(|e| e.spec.name == name)
    }

    /// Whether `key` was written (with a value of any kind).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.entry(name).is_some()
    }

    fn wrong_kind(&self, entry: &Entry, message: String) {
        self.cx.error_spanned_by(&entry.value, message);
    }

    /// A string value.
    pub(crate) fn get_str(&self, name: &str) -> Option<LitStr> {
        let entry = self.entry(name)?;
        debug_assert_eq!(entry.spec.kind, Kind::Str);
        let example = entry.spec.example;
        match &entry.value {
            Value::Lit(Lit::Str(lit)) => return Some(lit.clone()),
            Value::Type(Type::Path(p)) if p.qself.is_none() && p.path.get_ident().is_some() => {
                let written = p.to_token_stream().to_string();
                self.wrong_kind(
                    entry,
                    format!(
                        "`{name}` takes a string: write it in quotes: `{name} = \"{written}\"`"
                    ),
                );
            }
            Value::Lit(Lit::Int(int)) => {
                let written = int.base10_digits();
                self.wrong_kind(
                    entry,
                    format!(
                        "`{name}` takes a string: write it in quotes: `{name} = \"{written}\"`"
                    ),
                );
            }
            _ => self.wrong_kind(
                entry,
                format!("`{name}` takes a string literal: write `{example}`"),
            ),
        }
        None
    }

    /// An integer value of at least 1 that fits `N`.
    pub(crate) fn get_positive_int<N>(&self, name: &str) -> Option<N>
    where
        N: FromStr + PartialEq + Default,
        N::Err: Display,
    {
        let entry = self.entry(name)?;
        debug_assert_eq!(entry.spec.kind, Kind::Int);
        let example = entry.spec.example;
        let lit: &LitInt = match &entry.value {
            Value::Lit(Lit::Int(lit)) => lit,
            Value::Lit(Lit::Str(s)) if s.value().trim().parse::<u64>().is_ok() => {
                let written = s.value();
                let written = written.trim();
                self.wrong_kind(
                    entry,
                    format!(
                        "`{name}` takes a number, not a string: write it without quotes: \
                         `{name} = {written}`"
                    ),
                );
                return None;
            }
            _ => {
                self.wrong_kind(
                    entry,
                    format!("`{name}` takes a positive integer: write `{example}`"),
                );
                return None;
            }
        };
        match lit.base10_parse::<N>() {
            _ if lit.base10_digits().starts_with('-') => {
                self.cx.error_spanned_by(
                    lit,
                    format_args!("`{name}` must be at least 1: write `{example}`"),
                );
                None
            }
            Ok(n) if n == N::default() => {
                self.cx.error_spanned_by(
                    lit,
                    format_args!("`{name}` must be at least 1: write `{example}`"),
                );
                None
            }
            Ok(n) => Some(n),
            Err(error) => {
                self.cx.error_spanned_by(
                    lit,
                    format_args!(
                        "`{name}` must be a positive integer that fits in `{}`: {error}",
                        short_type_name::<N>()
                    ),
                );
                None
            }
        }
    }

    /// A type value.
    pub(crate) fn get_type(&self, name: &str) -> Option<Type> {
        self.get_type_or(name, |_| None)
    }

    /// A type value; `on_string` may word the error for a string given instead (else
    /// the error says to write the string's contents without quotes).
    pub(crate) fn get_type_or(
        &self,
        name: &str,
        on_string: impl FnOnce(&LitStr) -> Option<String>,
    ) -> Option<Type> {
        let entry = self.entry(name)?;
        debug_assert_eq!(entry.spec.kind, Kind::Type);
        let example = entry.spec.example;
        if let Value::Lit(Lit::Str(s)) = &entry.value
            && let Some(message) = on_string(s)
        {
            self.wrong_kind(entry, message);
            return None;
        }
        match &entry.value {
            Value::Type(ty) => return Some(ty.clone()),
            Value::Lit(Lit::Str(s)) if s.parse::<Type>().is_ok() => {
                let written = s.value();
                let written = written.trim();
                self.wrong_kind(
                    entry,
                    format!(
                        "`{name}` takes a type, not a string: write the type without quotes: \
                         `{name} = {written}`"
                    ),
                );
            }
            _ => self.wrong_kind(entry, format!("`{name}` takes a type: write `{example}`")),
        }
        None
    }

    /// The types of a `key(A, B)` list, each with its span; an empty list if the key
    /// is absent. Items that are not types, items listed twice and a list written as
    /// `key = ..` are reported (the rest of the list is still returned).
    pub(crate) fn get_type_list(&self, name: &str) -> Option<Vec<Type>> {
        let Some(entry) = self.entry(name) else {
            return Some(Vec::new());
        };
        debug_assert_eq!(entry.spec.kind, Kind::TypeList);
        let example = entry.spec.example;
        let items = match &entry.value {
            Value::List(items) => items,
            Value::Type(Type::Tuple(tuple)) => {
                let written = tuple.to_token_stream().to_string().replace(' ', "");
                self.wrong_kind(
                    entry,
                    format!("`{name}` takes its list without `=`: write `{name}{written}`"),
                );
                return None;
            }
            Value::Type(Type::Paren(_) | Type::Path(_)) => {
                let written = entry.value.to_token_stream().to_string().replace(' ', "");
                let written = written.trim_start_matches('(').trim_end_matches(')');
                self.wrong_kind(
                    entry,
                    format!(
                        "`{name}` takes a list in parentheses, without `=`: write \
                         `{name}({written})`"
                    ),
                );
                return None;
            }
            _ => {
                self.wrong_kind(
                    entry,
                    format!("`{name}` takes a list of types in parentheses: write `{example}`"),
                );
                return None;
            }
        };
        let mut types: Vec<Type> = Vec::with_capacity(items.len());
        let mut written: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Ok(ty) => {
                    let key = ty.to_token_stream().to_string().replace(' ', "");
                    if written.contains(&key) {
                        self.cx.error_spanned_by(
                            ty,
                            format_args!(
                                "`{key}` is listed twice in `{name}(...)`: remove this one"
                            ),
                        );
                        continue;
                    }
                    written.push(key);
                    types.push(ty.clone());
                }
                Err(other) => {
                    let message = match syn::parse2::<LitStr>(other.clone()) {
                        Ok(s) if s.parse::<Type>().is_ok() => format!(
                            "`{name}` lists types, not strings: write `{}` without quotes",
                            s.value().trim()
                        ),
                        _ => format!(
                            "`{}` is not a type: `{name}(...)` lists types by name or path, \
                             e.g. `{example}`",
                            other.to_string().replace(' ', "")
                        ),
                    };
                    self.cx.error_spanned_by(other, message);
                }
            }
        }
        Some(types)
    }

    /// The path to the framework: `crate = "..."`, or else the crate the deriving
    /// crate depends on (see [`framework_path`]).
    pub(crate) fn crate_path(&self) -> TokenStream {
        match self.get_path("crate") {
            Some(path) => path.into_token_stream(),
            None => framework_path(),
        }
    }

    /// A path written as a string literal, e.g. `crate = "tb"`.
    pub(crate) fn get_path(&self, name: &str) -> Option<Path> {
        let entry = self.entry(name)?;
        debug_assert_eq!(entry.spec.kind, Kind::Path);
        let example = entry.spec.example;
        match &entry.value {
            Value::Lit(Lit::Str(s)) => match s.parse::<Path>() {
                Ok(path) => return Some(path),
                Err(_) => self.wrong_kind(
                    entry,
                    format!(
                        "`{name} = {}` is not a path: write the path of the `tributary` crate \
                         in quotes, e.g. `{example}`",
                        s.to_token_stream()
                    ),
                ),
            },
            Value::Type(Type::Path(p)) if p.qself.is_none() => {
                let written = p.to_token_stream().to_string().replace(' ', "");
                self.wrong_kind(
                    entry,
                    format!("`{name}` takes a path in quotes: write `{name} = \"{written}\"`"),
                );
            }
            _ => self.wrong_kind(
                entry,
                format!("`{name}` takes a path in quotes: write `{example}`"),
            ),
        }
        None
    }
}

fn short_type_name<N>() -> &'static str {
    let full = std::any::type_name::<N>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Parses one value: a literal, a type, or anything else up to the next `,`.
fn parse_value(input: ParseStream<'_>) -> Value {
    if input.peek(Lit)
        && let Ok(lit) = input.parse::<Lit>()
    {
        if input.is_empty() || input.peek(Token![,]) {
            return Value::Lit(lit);
        }
        let mut tokens = lit.to_token_stream();
        tokens.extend(skip_to_comma(input));
        return Value::Other(tokens);
    }
    let fork = input.fork();
    if let Ok(ty) = fork.parse::<Type>()
        && (fork.is_empty() || fork.peek(Token![,]))
    {
        input.advance_to(&fork);
        return Value::Type(ty);
    }
    Value::Other(skip_to_comma(input))
}

/// Parses `(A, b::C, ..)`: each item a type, or the tokens of an item that is not.
fn parse_list(input: ParseStream<'_>) -> syn::Result<Vec<Result<Type, TokenStream>>> {
    let content;
    syn::parenthesized!(content in input);
    let mut items = Vec::new();
    while !content.is_empty() {
        let fork = content.fork();
        match fork.parse::<Type>() {
            Ok(ty) if fork.is_empty() || fork.peek(Token![,]) => {
                content.advance_to(&fork);
                items.push(Ok(ty));
            }
            _ => items.push(Err(skip_to_comma(&content))),
        }
        if !content.is_empty() {
            content.parse::<Token![,]>()?;
        }
    }
    Ok(items)
}

/// Consumes tokens up to (not including) the next top-level `,`.
fn skip_to_comma(input: ParseStream<'_>) -> TokenStream {
    let mut tokens = TokenStream::new();
    while !input.is_empty() && !input.peek(Token![,]) {
        match input.parse::<TokenTree>() {
            Ok(tt) => tokens.extend([tt]),
            Err(_) => break,
        }
    }
    tokens
}

/// Rejects any arguments on a marker attribute such as `#[aggregate_id]`.
pub(crate) fn check_marker(cx: &Ctxt, attr: &Attribute, how: &str) {
    match &attr.meta {
        Meta::Path(_) => {}
        Meta::List(list) => cx.error_spanned_by(
            list,
            format_args!(
                "`#[{}]` takes no arguments: write `#[{}]` {how}",
                attr.path().to_token_stream(),
                attr.path().to_token_stream()
            ),
        ),
        Meta::NameValue(nv) => cx.error_spanned_by(
            nv,
            format_args!(
                "`#[{}]` takes no value: write `#[{}]` {how}",
                attr.path().to_token_stream(),
                attr.path().to_token_stream()
            ),
        ),
    }
}

/// Reports every `#[name ...]` in `attrs`: they do nothing at this place.
pub(crate) fn reject_attrs(cx: &Ctxt, attrs: &[Attribute], name: &str, message: &str) {
    for attr in attrs.iter().filter(|a| a.path().is_ident(name)) {
        cx.error_spanned_by(attr, message);
    }
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
pub(crate) fn closest<'c>(
    written: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let written = written.to_lowercase();
    let max = (written.chars().count().max(3) / 3).max(1);
    let candidates: Vec<&'c str> = candidates.into_iter().collect();
    let by_distance = candidates
        .iter()
        .map(|c| (edit_distance(&written, c), *c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    // `snapshot` → `snapshot_every`, `version_state` → no; only unambiguous prefixes.
    by_distance.or_else(|| {
        let mut prefixed = candidates
            .iter()
            .filter(|c| written.len() >= 3 && c.starts_with(written.as_str()));
        match (prefixed.next(), prefixed.next()) {
            (Some(only), None) => Some(*only),
            _ => None,
        }
    })
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        if let Some(first) = row.first_mut() {
            *first = i;
        }
    }
    if let Some(row) = rows.first_mut() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = j;
        }
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// `ItemsAdded` → `items_added`, `HTTPRequest` → `http_request`, `V2Placed` → `v2_placed`.
pub(crate) fn snake_case(ident: &str) -> String {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let chars: Vec<char> = ident.chars().collect();
    let mut out = String::with_capacity(ident.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                None | Some('_') => false,
                Some(p) if p.is_lowercase() || p.is_numeric() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(char::is_lowercase),
                Some(_) => false,
            };
            if boundary {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A type name for a name, to suggest in an error: `order-line` → `OrderLine`,
/// `order_line` → `OrderLine`, `Order` → `Order`. `None` if no identifier comes of it.
pub(crate) fn upper_camel_case(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for word in name.split(|c: char| !c.is_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.extend(chars);
        }
    }
    let ok = out.chars().next().is_some_and(char::is_alphabetic)
        && syn::parse_str::<Ident>(&out).is_ok();
    ok.then_some(out)
}

/// Which names a string may be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum NameRule {
    /// `[a-z][a-z0-9_-]*`: aggregate names, part of topic names.
    Aggregate,
    /// `[a-z][a-z0-9_]*`: event and command names.
    Ident,
}

impl NameRule {
    fn allows(self, c: char) -> bool {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '_'
            || (c == '-' && self == NameRule::Aggregate)
    }

    fn describe(self) -> &'static str {
        match self {
            NameRule::Aggregate => {
                "use lowercase ASCII letters, digits, `_` and `-`, starting with a letter \
                 (it becomes part of Kafka topic names and event types)"
            }
            NameRule::Ident => {
                "use lowercase ASCII letters, digits and `_`, starting with a letter \
                 (it becomes part of event types and wire names)"
            }
        }
    }
}

/// Whether `name` matches `rule`.
pub(crate) fn is_valid_name(name: &str, rule: NameRule) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| rule.allows(c))
}

/// A valid name close to `name`, to suggest in an error: `Order Events` → `order_events`.
pub(crate) fn suggest_name(name: &str, rule: NameRule) -> Option<String> {
    let snake = snake_case(name.trim());
    let mut out = String::with_capacity(snake.len());
    for c in snake.chars() {
        let c = if c.is_ascii_uppercase() {
            c.to_ascii_lowercase()
        } else {
            c
        };
        if rule.allows(c) {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out
        .trim_start_matches(|c: char| !c.is_ascii_lowercase())
        .trim_end_matches('_');
    is_valid_name(out, rule).then(|| out.to_owned())
}

/// Checks a name given in an attribute, e.g. `name = "Order"`, and records an error
/// that suggests a valid spelling.
pub(crate) fn check_name(
    cx: &Ctxt,
    lit: &LitStr,
    key: &str,
    what: &str,
    rule: NameRule,
) -> Option<String> {
    let name = lit.value();
    if is_valid_name(&name, rule) {
        return Some(name);
    }
    let fix = match suggest_name(&name, rule) {
        Some(s) => format!("; write e.g. `{key} = \"{s}\"`"),
        None => String::new(),
    };
    cx.error_spanned_by(
        lit,
        format_args!(
            "`{name}` is not a valid {what} name: {}{fix}",
            rule.describe()
        ),
    );
    None
}

/// Checks a name derived from a Rust identifier (no attribute given); the error says
/// which attribute sets it explicitly.
pub(crate) fn check_derived_name(
    cx: &Ctxt,
    ident: &Ident,
    derived: &str,
    what: &str,
    rule: NameRule,
    how: &str,
) -> bool {
    if is_valid_name(derived, rule) {
        return true;
    }
    let fix = suggest_name(derived, rule).unwrap_or_else(|| "my_name".to_owned());
    cx.error_spanned_by(
        ident,
        format_args!(
            "the {what} name `{derived}` derived from `{ident}` is not valid: {}; \
             set one explicitly with `{}`",
            rule.describe(),
            how.replace("{}", &fix)
        ),
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_conversion() {
        let cases = [
            ("Placed", "placed"),
            ("ItemsAdded", "items_added"),
            ("PlaceOrder", "place_order"),
            ("HTTPRequest", "http_request"),
            ("OrderV2", "order_v2"),
            ("V2Placed", "v2_placed"),
            ("Placed2", "placed2"),
            ("ABC", "abc"),
            ("Items_Added", "items_added"),
            ("already_snake", "already_snake"),
            ("r#Type", "type"),
            ("A", "a"),
            ("XMLHttpRequest", "xml_http_request"),
        ];
        for (input, expected) in cases {
            assert_eq!(snake_case(input), expected, "snake_case({input:?})");
        }
    }

    #[test]
    fn upper_camel_case_conversion() {
        let cases = [
            ("order", Some("Order")),
            ("order-line", Some("OrderLine")),
            ("order_line", Some("OrderLine")),
            ("Order Lines", Some("OrderLines")),
            ("OrderLine", Some("OrderLine")),
            ("shop.v2", Some("ShopV2")),
            ("2order", None),
            ("-", None),
            ("", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                upper_camel_case(input).as_deref(),
                expected,
                "upper_camel_case({input:?})"
            );
        }
    }

    #[test]
    fn name_validation() {
        for ok in ["order", "order-line", "order_line", "o", "order2", "a-1_b"] {
            assert!(
                is_valid_name(ok, NameRule::Aggregate),
                "{ok:?} should be valid"
            );
        }
        for bad in [
            "",
            "Order",
            "1order",
            "-order",
            "_order",
            "order.line",
            "order line",
            "ordér",
        ] {
            assert!(
                !is_valid_name(bad, NameRule::Aggregate),
                "{bad:?} should be invalid"
            );
        }
        assert!(is_valid_name("items_added", NameRule::Ident));
        assert!(!is_valid_name("items-added", NameRule::Ident));
        assert!(!is_valid_name("items.added", NameRule::Ident));
    }

    #[test]
    fn name_suggestions() {
        assert_eq!(
            suggest_name("Order", NameRule::Aggregate).as_deref(),
            Some("order")
        );
        assert_eq!(
            suggest_name("OrderLine", NameRule::Aggregate).as_deref(),
            Some("order_line")
        );
        assert_eq!(
            suggest_name("order line", NameRule::Aggregate).as_deref(),
            Some("order_line")
        );
        assert_eq!(
            suggest_name("order.line", NameRule::Ident).as_deref(),
            Some("order_line")
        );
        assert_eq!(
            suggest_name("items-added", NameRule::Ident).as_deref(),
            Some("items_added")
        );
        assert_eq!(
            suggest_name("1order", NameRule::Aggregate).as_deref(),
            Some("order")
        );
        assert_eq!(suggest_name("123", NameRule::Aggregate), None);
        assert_eq!(suggest_name("", NameRule::Aggregate), None);
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("version", "version"), 0);
        assert_eq!(edit_distance("verison", "version"), 1);
        assert_eq!(edit_distance("aggregat", "aggregate"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_key() {
        let keys = ["aggregate", "crate"];
        assert_eq!(closest("aggregat", keys), Some("aggregate"));
        assert_eq!(closest("agregate", keys), Some("aggregate"));
        assert_eq!(closest("Aggregate", keys), Some("aggregate"));
        assert_eq!(closest("krate", keys), Some("crate"));
        assert_eq!(closest("topic", keys), None);
        let keys = ["name", "snapshot_every", "state_version", "state_vector"];
        assert_eq!(closest("snapshot", keys), Some("snapshot_every"));
        assert_eq!(closest("state", keys), None);
        assert_eq!(closest("na", keys), None);
        assert_eq!(
            closest("snapshot_evry", ["snapshot_every", "state_version"]),
            Some("snapshot_every")
        );
    }
}

/// Helpers for the expansion unit tests of the three derives.
#[cfg(test)]
pub(crate) mod test_support {
    use proc_macro2::TokenStream;
    use syn::DeriveInput;

    /// The expansion as a string with whitespace removed, so that tests can look for
    /// snippets without caring how `quote!` spaces tokens. The framework's path in it
    /// is `::tributary_core`: this crate's manifest depends on that and not on
    /// `tributary` (see `framework_path`).
    pub(crate) fn expand_ok(
        expand: fn(&DeriveInput) -> syn::Result<TokenStream>,
        input: &DeriveInput,
    ) -> String {
        match expand(input) {
            Ok(tokens) => tokens.to_string().replace(' ', ""),
            Err(error) => panic!("expected an expansion, got errors: {error}"),
        }
    }

    /// Every error message of a failed expansion, in order.
    pub(crate) fn expand_err(
        expand: fn(&DeriveInput) -> syn::Result<TokenStream>,
        input: &DeriveInput,
    ) -> Vec<String> {
        match expand(input) {
            Ok(tokens) => panic!("expected errors, got an expansion: {tokens}"),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }
}

/// The path to the framework for a crate that did not write `crate = "..."`:
/// `tributary` when its manifest depends on it (the runtime re-exports the core at
/// the same paths), else `tributary-core` (a domain crate without the Kafka
/// runtime), under whatever name the manifest gives them. `::tributary` when
/// neither is found, so that the compiler's error names the crate to add.
fn framework_path() -> TokenStream {
    use proc_macro_crate::crate_name;
    choose_framework(
        crate_name("tributary").ok(),
        crate_name("tributary-core").ok(),
    )
}

/// [`framework_path`]'s choice, given what the manifest names the two crates.
fn choose_framework(
    runtime: Option<proc_macro_crate::FoundCrate>,
    core: Option<proc_macro_crate::FoundCrate>,
) -> TokenStream {
    use proc_macro_crate::FoundCrate;
    let ident = |name: &str| Ident::new(name, Span::call_site());
    match (runtime, core) {
        (Some(FoundCrate::Name(name)), _) => {
            let name = ident(&name);
            quote::quote!(::#name)
        }
        (Some(FoundCrate::Itself), _) | (None, None) => quote::quote!(::tributary),
        // tributary-core's own integration and doc tests: they see it as an
        // external crate of that name.
        (None, Some(FoundCrate::Itself)) => quote::quote!(::tributary_core),
        (None, Some(FoundCrate::Name(name))) => {
            let name = ident(&name);
            quote::quote!(::#name)
        }
    }
}

#[cfg(test)]
mod framework_path_tests {
    use proc_macro_crate::FoundCrate;

    use super::choose_framework;

    fn name(s: &str) -> Option<FoundCrate> {
        Some(FoundCrate::Name(s.to_owned()))
    }

    #[test]
    fn the_runtime_wins_over_the_core() {
        let path = choose_framework(name("tributary"), name("tributary_core"));
        assert_eq!(path.to_string(), ":: tributary");
    }

    #[test]
    fn a_renamed_dependency_is_followed() {
        assert_eq!(choose_framework(name("tb"), None).to_string(), ":: tb");
        assert_eq!(
            choose_framework(None, name("domain_core")).to_string(),
            ":: domain_core"
        );
    }

    #[test]
    fn a_domain_crate_with_only_the_core_gets_the_core() {
        let path = choose_framework(None, name("tributary_core"));
        assert_eq!(path.to_string(), ":: tributary_core");
        let inside = choose_framework(None, Some(FoundCrate::Itself));
        assert_eq!(inside.to_string(), ":: tributary_core");
    }

    #[test]
    fn without_either_the_error_names_tributary() {
        assert_eq!(choose_framework(None, None).to_string(), ":: tributary");
    }
}
