//! `#[derive(Command)]`: a request to one aggregate instance, addressed by its
//! `#[aggregate_id]` field.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Field, Fields, Index, Member, Type};

use crate::attr::{self, Attrs, Ctxt, Key, Kind, NameRule, Schema};

static CONTAINER: Schema = Schema {
    attr: "command",
    place: "the struct",
    keys: &[
        Key {
            name: "aggregate",
            kind: Kind::Type,
            example: "aggregate = Order",
        },
        Key {
            name: "name",
            kind: Kind::Str,
            example: "name = \"place_order\"",
        },
        Key {
            name: "crate",
            kind: Kind::Path,
            example: "crate = \"::tributary\"",
        },
    ],
    misplaced: &[(
        "aggregate_id",
        "mark the id field itself with `#[aggregate_id]` instead",
    )],
};

const AGGREGATE_ID: &str = "aggregate_id";

const MARK_ID: &str = "mark the field that holds the id of the target aggregate with \
                       `#[aggregate_id]`";

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let expanded = expand_inner(&cx, input);
    cx.check()?;
    Ok(expanded.unwrap_or_default())
}

fn expand_inner(cx: &Ctxt, input: &DeriveInput) -> Option<TokenStream> {
    let fields = match &input.data {
        Data::Struct(s) => Some(&s.fields),
        Data::Enum(e) => {
            cx.error_spanned_by(
                e.enum_token,
                "`Command` can only be derived for structs: a command is one request with the \
                 id of its target aggregate in a field marked `#[aggregate_id]`; derive it on \
                 one struct per command",
            );
            None
        }
        Data::Union(u) => {
            cx.error_spanned_by(
                u.union_token,
                "`Command` can only be derived for structs: a command is one request with the \
                 id of its target aggregate in a field marked `#[aggregate_id]`",
            );
            None
        }
    };

    attr::reject_attrs(
        cx,
        &input.attrs,
        AGGREGATE_ID,
        "`#[aggregate_id]` goes on a field, not on the struct: mark the field that holds the id \
         of the target aggregate",
    );

    let attrs = Attrs::parse(cx, &CONTAINER, &input.attrs);
    let aggregate = attrs.get_type("aggregate");
    if !attrs.has("aggregate") && !attrs.was_suggested("aggregate") {
        let message = if attrs.is_absent() {
            format!(
                "missing `#[command(aggregate = ...)]`: name the aggregate type this command \
                 targets, e.g. `#[command(aggregate = Order)]` above `struct {}`",
                input.ident
            )
        } else {
            "missing key `aggregate` in `#[command(...)]`: name the aggregate type this command \
             targets, e.g. `#[command(aggregate = Order)]`"
                .to_owned()
        };
        match attrs.first_attr() {
            Some(attr) => cx.error_spanned_by(attr, message),
            None => cx.error_spanned_by(&input.ident, message),
        }
    }
    let name = match attrs.get_str("name") {
        Some(lit) => attr::check_name(cx, &lit, "name", "command", NameRule::Ident),
        None if attrs.has("name") => None,
        None => {
            let derived = attr::snake_case(&input.ident.to_string());
            attr::check_derived_name(
                cx,
                &input.ident,
                &derived,
                "command",
                NameRule::Ident,
                "#[command(name = \"{}\")]",
            )
            .then_some(derived)
        }
    };

    let krate = attrs.crate_path();
    let id = match fields {
        Some(fields) => find_id_field(cx, input, fields),
        None => None,
    };

    let (aggregate, name, (member, id_ty)) = (aggregate?, name?, id?);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let ident = &input.ident;
    // Located at the field's type so that "`X` doesn't implement `Display`" points there.
    let span = Span::call_site().located_at(id_ty.span());
    let to_string = quote_spanned!(span=> ::std::string::ToString::to_string(&self.#member));
    // The aggregate must list this command (`#[aggregate(commands(..))]`), else no
    // processor decides it. Spanned at `aggregate = ..`, which names the aggregate
    // whose list to fix. A generic command cannot be named in a free constant (it is
    // listed as e.g. `Annotate<String>`): no check.
    let declared = if input.generics.params.is_empty() {
        let span = Span::call_site().located_at(aggregate.span());
        quote_spanned! {span=>
            const _: () = #krate::__private::assert_declared::<#ident, #aggregate>();
        }
    } else {
        TokenStream::new()
    };
    Some(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Command for #ident #ty_generics #where_clause {
            type Aggregate = #aggregate;

            const NAME: &'static str = #name;

            fn aggregate_id(&self) -> #krate::AggregateId {
                #krate::AggregateId::new(#to_string)
            }
        }

        #declared
    })
}

/// The one field marked `#[aggregate_id]`: how to access it and its type.
fn find_id_field<'a>(
    cx: &Ctxt,
    input: &DeriveInput,
    fields: &'a Fields,
) -> Option<(Member, &'a Type)> {
    if fields.is_empty() {
        let what = if matches!(fields, Fields::Unit) {
            "a unit struct"
        } else {
            "a struct without fields"
        };
        cx.error_spanned_by(
            &input.ident,
            format_args!(
                "`Command` cannot be derived for {what}: a command needs a field with the id of \
                 its target aggregate; add one and mark it with `#[aggregate_id]`, e.g. \
                 `struct {} {{ #[aggregate_id] id: String }}`",
                input.ident
            ),
        );
        return None;
    }

    let mut found: Option<(Member, &'a Field)> = None;
    let mut ok = true;
    for (index, field) in fields.iter().enumerate() {
        attr::reject_attrs(
            cx,
            &field.attrs,
            "command",
            "`#[command(...)]` goes on the struct, not on a field",
        );
        let mut marks = field
            .attrs
            .iter()
            .filter(|a| a.path().is_ident(AGGREGATE_ID));
        let Some(mark) = marks.next() else {
            continue;
        };
        attr::check_marker(cx, mark, "on the field that holds the aggregate's id");
        for extra in marks {
            cx.error_spanned_by(
                extra,
                "duplicate `#[aggregate_id]` on this field; remove it",
            );
        }
        let member = match &field.ident {
            Some(ident) => Member::Named(ident.clone()),
            None => Member::Unnamed(Index {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                span: Span::call_site(),
            }),
        };
        match &found {
            Some((first, _)) => {
                let first = match first {
                    Member::Named(ident) => format!("`{ident}`"),
                    Member::Unnamed(i) => format!("field {}", i.index),
                };
                cx.error_spanned_by(
                    mark,
                    format_args!(
                        "only one field can be the `#[aggregate_id]`: {first} already is; a \
                         command targets exactly one aggregate instance, so remove this one \
                         (combine the parts into one id type if the id is composite)"
                    ),
                );
                ok = false;
            }
            None => found = Some((member, field)),
        }
    }
    let Some((member, field)) = found else {
        cx.error_spanned_by(
            &input.ident,
            format_args!(
                "no field of `{}` is marked `#[aggregate_id]`: {MARK_ID}",
                input.ident
            ),
        );
        return None;
    };
    ok.then_some((member, &field.ty))
}

#[cfg(test)]
mod expansion_tests {
    use syn::parse_quote;

    use super::expand;
    use crate::attr::test_support::{expand_err, expand_ok};

    #[test]
    fn named_tuple_and_generic_commands() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[command(aggregate = crate::Order)]
                struct PlaceOrder { customer: String, #[aggregate_id] order_id: OrderId }
            },
        );
        assert!(out.contains("typeAggregate=crate::Order;"), "{out}");
        assert!(
            out.contains(r#"constNAME:&'staticstr="place_order";"#),
            "{out}"
        );
        assert!(
            out.contains("::std::string::ToString::to_string(&self.order_id)"),
            "{out}"
        );
        // The aggregate must list it.
        assert!(
            out.contains(
                "const_:()=::tributary_core::__private::assert_declared::<PlaceOrder,crate::Order>();"
            ),
            "{out}"
        );

        let out = expand_ok(
            expand,
            &parse_quote! {
                #[command(aggregate = Order, name = "cancel", crate = "tb")]
                struct Cancel<T: Clone>(T, #[aggregate_id] u64) where T: Send;
            },
        );
        assert!(
            out.contains("impl<T:Clone>tb::CommandforCancel<T>whereT:Send"),
            "{out}"
        );
        assert!(out.contains(r#""cancel""#), "{out}");
        assert!(out.contains("to_string(&self.1)"), "{out}");
        // A generic command cannot be named in a free constant: no check.
        assert!(!out.contains("assert_declared"), "{out}");
    }

    #[test]
    fn missing_everything() {
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[aggregate_id]
                struct Ping { id: String }
            },
        );
        let expected = [
            "goes on a field, not on the struct",
            "missing `#[command(aggregate = ...)]`",
            "no field of `Ping` is marked `#[aggregate_id]`",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn wrong_value_types() {
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[command(aggregate = "Order", name = place, crate = 3)]
                struct P { #[aggregate_id = "x"] id: String }
            },
        );
        let expected = [
            "write the type without quotes: `aggregate = Order`",
            r#"write it in quotes: `name = "place"`"#,
            "`crate` takes a path in quotes",
            "`#[aggregate_id]` takes no value",
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
