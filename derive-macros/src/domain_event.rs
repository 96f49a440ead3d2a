//! `#[derive(DomainEvent)]`: one variant per event type of one aggregate.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, LitStr, Meta, Token, Type, Variant};

use crate::attr::{self, Attrs, Ctxt, Key, Kind, NameRule, Schema};

static CONTAINER: Schema = Schema {
    attr: "event",
    place: "the enum",
    keys: &[
        Key {
            name: "aggregate",
            kind: Kind::Type,
            example: "aggregate = Order",
        },
        Key {
            name: "crate",
            kind: Kind::Path,
            example: "crate = \"::tributary\"",
        },
    ],
    misplaced: &[
        (
            "version",
            "`version` goes on a variant: `#[event(version = 2)]` above the variant",
        ),
        (
            "name",
            "`name` renames one event and goes on a variant: `#[event(name = \"placed\")]`; \
             the aggregate is set with `#[event(aggregate = Order)]`",
        ),
    ],
};

static VARIANT: Schema = Schema {
    attr: "event",
    place: "a variant",
    keys: &[
        Key {
            name: "version",
            kind: Kind::Int,
            example: "version = 2",
        },
        Key {
            name: "name",
            kind: Kind::Str,
            example: "name = \"placed\"",
        },
    ],
    misplaced: &[
        (
            "aggregate",
            "`aggregate` goes on the enum: `#[event(aggregate = Order)]` above `enum`",
        ),
        (
            "crate",
            "`crate` goes on the enum: `#[event(crate = \"...\")]` above `enum`",
        ),
    ],
};

/// One variant, checked.
struct EventVariant<'a> {
    variant: &'a Variant,
    /// `placed`: the event's name within its aggregate. The full name
    /// (`order.placed`) is built at compile time from the aggregate's `NAME`.
    segment: String,
    version: u32,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let expanded = expand_inner(&cx, input);
    cx.check()?;
    Ok(expanded.unwrap_or_default())
}

fn expand_inner(cx: &Ctxt, input: &DeriveInput) -> Option<TokenStream> {
    let data = match &input.data {
        Data::Enum(data) => Some(data),
        Data::Struct(s) => {
            cx.error_spanned_by(
                s.struct_token,
                "`DomainEvent` can only be derived for enums: one variant per event type, \
                 e.g. `enum OrderEvent { Placed { .. }, Cancelled { .. } }`",
            );
            None
        }
        Data::Union(u) => {
            cx.error_spanned_by(
                u.union_token,
                "`DomainEvent` can only be derived for enums: one variant per event type, \
                 e.g. `enum OrderEvent { Placed { .. }, Cancelled { .. } }`",
            );
            None
        }
    };

    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "`DomainEvent` cannot be derived for a generic type: every event type needs one \
             fixed name and payload schema; remove the generic parameters",
        );
    }

    let attrs = Attrs::parse(cx, &CONTAINER, &input.attrs);
    let guess = guess_aggregate(&input.ident.to_string());
    let aggregate = attrs.get_type_or("aggregate", |lit| name_given(lit, &guess));
    if !attrs.has("aggregate") && !attrs.was_suggested("aggregate") {
        let message = if attrs.is_absent() {
            format!(
                "missing `#[event(aggregate = ...)]`: name the aggregate type these events \
                 belong to, e.g. `#[event(aggregate = {guess})]` above `enum {}`",
                input.ident
            )
        } else {
            format!(
                "missing key `aggregate` in `#[event(...)]`: name the aggregate type these \
                 events belong to, e.g. `#[event(aggregate = {guess})]`"
            )
        };
        match attrs.first_attr() {
            Some(attr) => cx.error_spanned_by(attr, message),
            None => cx.error_spanned_by(&input.ident, message),
        }
    }
    let krate = attrs.crate_path();
    check_serde_container(cx, &input.attrs);

    let data = data?;
    if data.variants.is_empty() {
        cx.error_spanned_by(
            &input.ident,
            format_args!(
                "`{}` has no variants: add one variant per event type, e.g. `Placed {{ .. }}`",
                input.ident
            ),
        );
    }

    // Checked variants: `(variant, name segment, version)`; `None` where the variant has
    // an error. Duplicate names are found even when other keys are wrong.
    let mut checked: Vec<(&Variant, Option<String>, Option<u32>)> =
        Vec::with_capacity(data.variants.len());
    for variant in &data.variants {
        let (segment, version) = check_variant(cx, variant);
        if let Some(segment) = &segment {
            let first = checked.iter().find(|(_, s, _)| s.as_ref() == Some(segment));
            if let Some((first, _, _)) = first {
                cx.error_spanned_by(
                    &variant.ident,
                    format_args!(
                        "duplicate event name `{segment}`: variant `{}` already has it; give \
                         this variant a different name, e.g. `#[event(name = \"{segment}_2\")]`",
                        first.ident
                    ),
                );
                checked.push((variant, None, version));
                continue;
            }
        }
        checked.push((variant, segment, version));
    }
    let aggregate = aggregate?;
    let mut variants: Vec<EventVariant<'_>> = Vec::with_capacity(checked.len());
    for (variant, segment, version) in checked {
        variants.push(EventVariant {
            variant,
            segment: segment?,
            version: version?,
        });
    }
    if variants.is_empty() {
        return None;
    }
    Some(generate(input, &krate, &aggregate, &variants))
}

/// The aggregate type an event enum probably belongs to, for error messages:
/// `OrderEvent` → `Order`, `OrderEvents` → `Order`, `Order` → `Order`.
fn guess_aggregate(enum_name: &str) -> String {
    let enum_name = enum_name.strip_prefix("r#").unwrap_or(enum_name);
    enum_name
        .strip_suffix("Events")
        .or_else(|| enum_name.strip_suffix("Event"))
        .filter(|b| !b.is_empty())
        .unwrap_or(enum_name)
        .to_owned()
}

/// The error for `aggregate = "order"`: the attribute takes the type, as
/// `#[command(aggregate = ..)]` does. The type is guessed from the name
/// (`"order-line"` → `OrderLine`), else from the enum (`guess`). `None` for a type
/// in quotes (`"Order"`, not a valid name): "write it without quotes" fits that.
fn name_given(lit: &LitStr, guess: &str) -> Option<String> {
    let written = lit.value();
    if lit.parse::<Type>().is_ok() && !attr::is_valid_name(&written, NameRule::Aggregate) {
        return None;
    }
    let ty = attr::upper_camel_case(&written).unwrap_or_else(|| guess.to_owned());
    Some(format!(
        "`aggregate` takes the aggregate type, not its name: `#[event(aggregate = {ty})]`; \
         the name is the aggregate's `#[aggregate(name = ..)]`"
    ))
}

/// Checks one variant's attributes: its name segment (`placed`) and version.
fn check_variant(cx: &Ctxt, variant: &Variant) -> (Option<String>, Option<u32>) {
    let attrs = Attrs::parse(cx, &VARIANT, &variant.attrs);
    let version = if attrs.has("version") {
        attrs.get_positive_int::<u32>("version")
    } else {
        Some(1)
    };
    let segment = match attrs.get_str("name") {
        Some(lit) => attr::check_name(cx, &lit, "name", "event", NameRule::Ident),
        None if attrs.has("name") => None,
        None => {
            let derived = attr::snake_case(&variant.ident.to_string());
            attr::check_derived_name(
                cx,
                &variant.ident,
                &derived,
                "event",
                NameRule::Ident,
                "#[event(name = \"{}\")]",
            )
            .then_some(derived)
        }
    };
    check_serde_variant(cx, &variant.attrs);
    for field in &variant.fields {
        attr::reject_attrs(
            cx,
            &field.attrs,
            "event",
            "`#[event(...)]` has no effect on a field: put `#[event(version = .., name = ..)]` \
             on the variant and `#[event(aggregate = ..)]` on the enum",
        );
    }
    (segment, version)
}

/// The serde attributes in `attrs`, tolerating anything serde accepts.
fn serde_metas(attrs: &[Attribute]) -> Vec<Meta> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .filter_map(|a| {
            a.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                .ok()
        })
        .flatten()
        .collect()
}

fn check_serde_container(cx: &Ctxt, attrs: &[Attribute]) {
    for meta in serde_metas(attrs) {
        let path = meta.path();
        let written = if path.is_ident("tag") {
            "tag = .."
        } else if path.is_ident("content") {
            "content = .."
        } else if path.is_ident("untagged") {
            "untagged"
        } else {
            continue;
        };
        cx.error_spanned_by(
            &meta,
            format_args!(
                "`#[serde({written})]` is not supported on an event enum: Tributary puts the \
                 event type in the `ce_type` header and the payload is the variant's data, so the \
                 enum must keep serde's default representation; remove it"
            ),
        );
    }
}

fn check_serde_variant(cx: &Ctxt, attrs: &[Attribute]) {
    for meta in serde_metas(attrs) {
        let path = meta.path();
        let (written, why) = if path.is_ident("skip") {
            (
                "skip",
                "every variant is an event type that must serialize and deserialize",
            )
        } else if path.is_ident("skip_deserializing") {
            (
                "skip_deserializing",
                "every variant is an event type that must deserialize",
            )
        } else if path.is_ident("skip_serializing") {
            (
                "skip_serializing",
                "every variant is an event type that must serialize",
            )
        } else if path.is_ident("other") {
            (
                "other",
                "events are matched by their `ce_type` header; unknown types are reported as \
                 `PayloadError::UnknownType`",
            )
        } else if path.is_ident("untagged") {
            (
                "untagged",
                "Tributary puts the event type in the `ce_type` header, the payload is the \
                 variant's data",
            )
        } else {
            continue;
        };
        cx.error_spanned_by(
            &meta,
            format_args!(
                "`#[serde({written})]` is not supported on an event variant: {why}; remove it \
                 (or move the variant out of the event enum)"
            ),
        );
    }
}

fn generate(
    input: &DeriveInput,
    krate: &TokenStream,
    aggregate: &Type,
    variants: &[EventVariant<'_>],
) -> TokenStream {
    let ident = &input.ident;
    let enum_name = ident.to_string();
    let enum_name = enum_name.strip_prefix("r#").unwrap_or(&enum_name);
    let count = Literal::usize_unsuffixed(variants.len());

    let consts: Vec<_> = (0..variants.len())
        .map(|i| format_ident!("__TRIBUTARY_EVENT_TYPE_{}", i))
        .collect();
    let name_consts: Vec<_> = (0..variants.len())
        .map(|i| format_ident!("__TRIBUTARY_EVENT_NAME_{}", i))
        .collect();
    let names: Vec<TokenStream> = variants
        .iter()
        .map(|v| join_to_aggregate(krate, &format!(".{}", v.segment)))
        .collect();
    let versions: Vec<Literal> = variants
        .iter()
        .map(|v| Literal::u32_unsuffixed(v.version))
        .collect();
    let ce_types: Vec<TokenStream> = variants
        .iter()
        .map(|v| join_to_aggregate(krate, &format!(".{}.v{}", v.segment, v.version)))
        .collect();
    let patterns: Vec<TokenStream> = variants
        .iter()
        .map(|v| {
            let vident = &v.variant.ident;
            match &v.variant.fields {
                Fields::Named(_) => quote!(Self::#vident { .. }),
                Fields::Unnamed(_) => quote!(Self::#vident(..)),
                Fields::Unit => quote!(Self::#vident),
            }
        })
        .collect();
    let indices: Vec<Literal> = (0..variants.len()).map(Literal::usize_unsuffixed).collect();
    let units = variants
        .iter()
        .map(|v| matches!(v.variant.fields, Fields::Unit));

    // The aggregate's name, through a function whose bound is the check that
    // `#aggregate` is an aggregate whose events are this enum; spanned so that a
    // mistake is reported at the type in the attribute.
    let span = Span::call_site().located_at(aggregate.span());
    let aggregate_name = quote_spanned! {span=>
        #krate::__private::aggregate_name::<#aggregate, #ident>()
    };

    quote! {
        #[allow(deprecated)]
        const _: () = {
            const __TRIBUTARY_AGGREGATE: &str = #aggregate_name;
            #(
                const #name_consts: &str = #names;
                const #consts: #krate::EventType = #krate::EventType {
                    name: #name_consts,
                    version: #versions,
                    ce_type: #ce_types,
                };
            )*

            /// The serde names of the enum's variants, found once.
            fn __tributary_variant_names() -> &'static [&'static str] {
                static NAMES: ::std::sync::OnceLock<&'static [&'static str]> =
                    ::std::sync::OnceLock::new();
                *NAMES.get_or_init(#krate::__private::variant_names::<#ident>)
            }

            #[automatically_derived]
            impl #krate::DomainEvent for #ident {
                const AGGREGATE: &'static str = __TRIBUTARY_AGGREGATE;

                const EVENT_TYPES: &'static [#krate::EventType] = &[#(#consts),*];

                fn event_type(&self) -> &'static #krate::EventType {
                    match self {
                        #(#patterns => &#consts,)*
                    }
                }

                fn to_payload(
                    &self,
                ) -> ::core::result::Result<
                    #krate::__private::serde_json::Value,
                    #krate::PayloadError,
                > {
                    #krate::__private::to_payload(#enum_name, self)
                }

                fn from_payload(
                    __event_type: &#krate::EventType,
                    __payload: #krate::__private::serde_json::Value,
                ) -> ::core::result::Result<Self, #krate::PayloadError> {
                    let __names = __tributary_variant_names();
                    match __event_type.name {
                        #(
                            #name_consts => #krate::__private::from_payload(
                                #enum_name, __names, #count, #indices, #units, __payload,
                            ),
                        )*
                        __other => ::core::result::Result::Err(#krate::PayloadError::UnknownType {
                            name: ::std::borrow::ToOwned::to_owned(__other),
                        }),
                    }
                }

                fn from_payload_text(
                    __event_type: &#krate::EventType,
                    __json: &[u8],
                ) -> ::core::option::Option<Self> {
                    let __names = __tributary_variant_names();
                    match __event_type.name {
                        #(
                            #name_consts => #krate::__private::from_payload_text(
                                __names, #count, #indices, __json,
                            ),
                        )*
                        _ => ::core::option::Option::None,
                    }
                }
            }
        };
    }
}

/// A constant expression for the aggregate's name followed by `suffix`
/// (`.placed` gives `order.placed`), built at compile time: the name is the
/// aggregate's `NAME`, which the macro cannot read.
fn join_to_aggregate(krate: &TokenStream, suffix: &str) -> TokenStream {
    quote! {{
        const PARTS: &[&str] = &[__TRIBUTARY_AGGREGATE, #suffix];
        const BYTES: [u8; #krate::__private::concat_len(PARTS)] =
            #krate::__private::concat(PARTS);
        #krate::__private::as_str(&BYTES)
    }}
}

#[cfg(test)]
mod tests {
    use super::guess_aggregate;

    #[test]
    fn aggregate_guess() {
        assert_eq!(guess_aggregate("OrderEvent"), "Order");
        assert_eq!(guess_aggregate("OrderLineEvents"), "OrderLine");
        assert_eq!(guess_aggregate("r#OrderEvent"), "Order");
        assert_eq!(guess_aggregate("Event"), "Event");
        assert_eq!(guess_aggregate("Order"), "Order");
    }
}

#[cfg(test)]
mod expansion_tests {
    use syn::parse_quote;

    use super::expand;
    use crate::attr::test_support::{expand_err, expand_ok};

    #[test]
    fn event_types_join_the_aggregate_name_at_compile_time() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[event(aggregate = crate::OrderLine)]
                enum OrderLineEvent {
                    ItemsAdded { n: u32 },
                    #[event(version = 2)]
                    Removed(u32),
                    #[event(name = "shipped_out", version = 7)]
                    Shipped,
                }
            },
        );
        for snippet in [
            // The name, through the bound that checks the aggregate's event type.
            "const__TRIBUTARY_AGGREGATE:&str=\
             ::tributary_core::__private::aggregate_name::<crate::OrderLine,OrderLineEvent>();",
            "constAGGREGATE:&'staticstr=__TRIBUTARY_AGGREGATE;",
            r#"const__TRIBUTARY_EVENT_NAME_0:&str={constPARTS:&[&str]=&[__TRIBUTARY_AGGREGATE,".items_added"];"#,
            "constBYTES:[u8;::tributary_core::__private::concat_len(PARTS)]=\
             ::tributary_core::__private::concat(PARTS);\
             ::tributary_core::__private::as_str(&BYTES)",
            "name:__TRIBUTARY_EVENT_NAME_0,version:1,",
            r#"&[__TRIBUTARY_AGGREGATE,".items_added.v1"]"#,
            "name:__TRIBUTARY_EVENT_NAME_1,version:2,",
            r#"&[__TRIBUTARY_AGGREGATE,".removed.v2"]"#,
            r#"&[__TRIBUTARY_AGGREGATE,".shipped_out"]"#,
            r#"&[__TRIBUTARY_AGGREGATE,".shipped_out.v7"]"#,
            "Self::ItemsAdded{..}=>&__TRIBUTARY_EVENT_TYPE_0",
            "Self::Removed(..)=>&__TRIBUTARY_EVENT_TYPE_1",
            "Self::Shipped=>&__TRIBUTARY_EVENT_TYPE_2",
            "__TRIBUTARY_EVENT_NAME_2=>::tributary_core::__private::from_payload(",
            r#"from_payload("OrderLineEvent",__names,3,2,true,__payload"#,
            "__TRIBUTARY_EVENT_NAME_2=>::tributary_core::__private::from_payload_text(__names,3,2,__json",
            "::tributary_core::DomainEvent",
        ] {
            assert!(out.contains(snippet), "missing {snippet} in {out}");
        }
        assert!(!out.contains("unwrap") && !out.contains("expect"));
    }

    #[test]
    fn the_aggregate_is_a_type_not_a_name() {
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[event(aggregate = "order-line")]
                enum LineEvent { Added }
            },
        );
        assert_eq!(
            errors,
            ["`aggregate` takes the aggregate type, not its name: \
              `#[event(aggregate = OrderLine)]`; the name is the aggregate's \
              `#[aggregate(name = ..)]`"]
        );
        // A type in quotes: write it without them.
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[event(aggregate = "crate::Order")]
                enum OrderEvent { Placed }
            },
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("without quotes: `aggregate = crate::Order`"),
            "{errors:?}"
        );
        // No type to be had from the string: guess one from the enum.
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[event(aggregate = "1")]
                enum OrderEvent { Placed }
            },
        );
        assert!(
            errors[0].contains("`#[event(aggregate = Order)]`"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_missing_aggregate_is_guessed_from_the_enum() {
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[event(crate = "tb")]
                enum ShoppingCartEvents { Emptied }
            },
        );
        let expected = "missing key `aggregate` in `#[event(...)]`: name the aggregate type \
                        these events belong to, e.g. `#[event(aggregate = ShoppingCart)]`";
        assert_eq!(errors, [expected]);
    }

    #[test]
    fn crate_override_replaces_every_path() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[event(aggregate = A, crate = "my::tb")]
                enum E { X }
            },
        );
        assert!(out.contains("implmy::tb::DomainEventforE"), "{out}");
        assert!(!out.contains("::tributary"), "{out}");
    }

    #[test]
    fn invalid_derived_name_says_how_to_set_one() {
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[event(aggregate = A)]
                enum E { _Hidden }
            },
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(r#"`#[event(name = "hidden")]`"#),
            "{errors:?}"
        );
    }

    #[test]
    fn reports_every_mistake_at_once() {
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[event(aggregat = A)]
                #[serde(tag = "t", content = "c")]
                enum E<T> {
                    #[event(version = 0)]
                    A(T),
                    #[event(name = "a", bogus)]
                    B,
                    #[serde(skip_serializing)]
                    C { #[event(version = 2)] x: u8 },
                }
            },
        );
        let expected = [
            "generic type",
            "did you mean `aggregate`?",
            "`#[serde(tag = ..)]`",
            "`#[serde(content = ..)]`",
            "`version` must be at least 1",
            "unknown key `bogus`",
            "duplicate event name `a`",
            "`#[serde(skip_serializing)]`",
            "`#[event(...)]` has no effect on a field",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
    }
}
