//! `#[derive(DomainEvent)]`: one variant per event type of one aggregate.

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::punctuated::Punctuated;
use syn::{Attribute, Data, DeriveInput, Fields, Meta, Token, Variant};

use crate::attr::{self, Attrs, Ctxt, Key, Kind, NameRule, Schema};

static CONTAINER: Schema = Schema {
    attr: "event",
    place: "the enum",
    keys: &[
        Key {
            name: "aggregate",
            kind: Kind::Str,
            example: "aggregate = \"order\"",
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
             the aggregate is set with `#[event(aggregate = \"order\")]`",
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
            "`aggregate` goes on the enum: `#[event(aggregate = \"order\")]` above `enum`",
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
    /// `order.placed`
    name: String,
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
    let aggregate = match attrs.get_str("aggregate") {
        Some(lit) => attr::check_name(cx, &lit, "aggregate", "aggregate", NameRule::Aggregate),
        None => {
            if !attrs.has("aggregate") && !attrs.was_suggested("aggregate") {
                let guess = guess_aggregate(&input.ident.to_string());
                let message = if attrs.is_absent() {
                    format!(
                        "missing `#[event(aggregate = \"...\")]`: name the aggregate these events \
                         belong to, e.g. `#[event(aggregate = \"{guess}\")]` above `enum {}`",
                        input.ident
                    )
                } else {
                    format!(
                        "missing key `aggregate` in `#[event(...)]`: name the aggregate these \
                         events belong to, e.g. `#[event(aggregate = \"{guess}\")]`"
                    )
                };
                match attrs.first_attr() {
                    Some(attr) => cx.error_spanned_by(attr, message),
                    None => cx.error_spanned_by(&input.ident, message),
                }
            }
            None
        }
    };
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
                let full = match &aggregate {
                    Some(aggregate) => format!("{aggregate}.{segment}"),
                    None => segment.clone(),
                };
                cx.error_spanned_by(
                    &variant.ident,
                    format_args!(
                        "duplicate event name `{full}`: variant `{}` already has it; give this \
                         variant a different name, e.g. `#[event(name = \"{segment}_2\")]`",
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
            name: format!("{aggregate}.{}", segment?),
            version: version?,
        });
    }
    if variants.is_empty() {
        return None;
    }
    Some(generate(input, &krate, &aggregate, &variants))
}

/// `OrderEvent` → `order`, `OrderEvents` → `order`, `Order` → `order`.
fn guess_aggregate(enum_name: &str) -> String {
    let base = enum_name
        .strip_suffix("Events")
        .or_else(|| enum_name.strip_suffix("Event"))
        .filter(|b| !b.is_empty())
        .unwrap_or(enum_name);
    attr::suggest_name(base, NameRule::Aggregate).unwrap_or_else(|| "order".to_owned())
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
    aggregate: &str,
    variants: &[EventVariant<'_>],
) -> TokenStream {
    let ident = &input.ident;
    let enum_name = ident.to_string();
    let enum_name = enum_name.strip_prefix("r#").unwrap_or(&enum_name);
    let count = Literal::usize_unsuffixed(variants.len());

    let consts: Vec<_> = (0..variants.len())
        .map(|i| format_ident!("__TRIBUTARY_EVENT_TYPE_{}", i))
        .collect();
    let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    let versions: Vec<Literal> = variants
        .iter()
        .map(|v| Literal::u32_unsuffixed(v.version))
        .collect();
    let ce_types: Vec<String> = variants
        .iter()
        .map(|v| format!("{}.v{}", v.name, v.version))
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
    let indices = (0..variants.len()).map(Literal::usize_unsuffixed);
    let units = variants
        .iter()
        .map(|v| matches!(v.variant.fields, Fields::Unit));

    quote! {
        #[allow(deprecated)]
        const _: () = {
            #(
                const #consts: #krate::EventType = #krate::EventType {
                    name: #names,
                    version: #versions,
                    ce_type: #ce_types,
                };
            )*

            #[automatically_derived]
            impl #krate::DomainEvent for #ident {
                const AGGREGATE: &'static str = #aggregate;

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
                    static NAMES: ::std::sync::OnceLock<&'static [&'static str]> =
                        ::std::sync::OnceLock::new();
                    let __names = *NAMES.get_or_init(#krate::__private::variant_names::<Self>);
                    match __event_type.name {
                        #(
                            #names => #krate::__private::from_payload(
                                #enum_name, __names, #count, #indices, #units, __payload,
                            ),
                        )*
                        __other => ::core::result::Result::Err(#krate::PayloadError::UnknownType {
                            name: ::std::borrow::ToOwned::to_owned(__other),
                        }),
                    }
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::guess_aggregate;

    #[test]
    fn aggregate_guess() {
        assert_eq!(guess_aggregate("OrderEvent"), "order");
        assert_eq!(guess_aggregate("OrderLineEvents"), "order_line");
        assert_eq!(guess_aggregate("Event"), "event");
        assert_eq!(guess_aggregate("Order"), "order");
    }
}

#[cfg(test)]
mod expansion_tests {
    use syn::parse_quote;

    use super::expand;
    use crate::attr::test_support::{expand_err, expand_ok};

    #[test]
    fn event_types_are_computed_at_macro_time() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[event(aggregate = "order-line")]
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
            r#"AGGREGATE:&'staticstr="order-line""#,
            r#"name:"order-line.items_added",version:1,ce_type:"order-line.items_added.v1""#,
            r#"name:"order-line.removed",version:2,ce_type:"order-line.removed.v2""#,
            r#"ce_type:"order-line.shipped_out.v7""#,
            "Self::ItemsAdded{..}=>&__TRIBUTARY_EVENT_TYPE_0",
            "Self::Removed(..)=>&__TRIBUTARY_EVENT_TYPE_1",
            "Self::Shipped=>&__TRIBUTARY_EVENT_TYPE_2",
            r#"from_payload("OrderLineEvent",__names,3,2,true,__payload"#,
            "::tributary_core::DomainEvent",
        ] {
            assert!(out.contains(snippet), "missing {snippet} in {out}");
        }
        assert!(!out.contains("unwrap") && !out.contains("expect"));
    }

    #[test]
    fn crate_override_replaces_every_path() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[event(aggregate = "a", crate = "my::tb")]
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
                #[event(aggregate = "a")]
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
                #[event(aggregat = "a")]
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
