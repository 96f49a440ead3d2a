//! `#[derive(Aggregate)]`: names an aggregate and ties it to its event and error types.

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput};

use crate::attr::{self, Attrs, Ctxt, Key, Kind, NameRule, Schema};

static CONTAINER: Schema = Schema {
    attr: "aggregate",
    place: "the aggregate",
    keys: &[
        Key {
            name: "name",
            kind: Kind::Str,
            example: "name = \"order\"",
        },
        Key {
            name: "event",
            kind: Kind::Type,
            example: "event = OrderEvent",
        },
        Key {
            name: "error",
            kind: Kind::Type,
            example: "error = OrderError",
        },
        Key {
            name: "commands",
            kind: Kind::TypeList,
            example: "commands(PlaceOrder, CancelOrder)",
        },
        Key {
            name: "snapshot_every",
            kind: Kind::Int,
            example: "snapshot_every = 100",
        },
        Key {
            name: "state_version",
            kind: Kind::Int,
            example: "state_version = 2",
        },
        Key {
            name: "crate",
            kind: Kind::Path,
            example: "crate = \"::tributary\"",
        },
    ],
    misplaced: &[],
};

const REQUIRED: [&str; 3] = ["name", "event", "error"];

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let expanded = expand_inner(&cx, input);
    cx.check()?;
    Ok(expanded.unwrap_or_default())
}

fn expand_inner(cx: &Ctxt, input: &DeriveInput) -> Option<TokenStream> {
    let mut ok = true;
    match &input.data {
        Data::Struct(_) | Data::Enum(_) => {}
        Data::Union(u) => {
            cx.error_spanned_by(
                u.union_token,
                "`Aggregate` cannot be derived for a union: hold the aggregate's state in a \
                 struct, or in an enum for a state machine",
            );
            ok = false;
        }
    }

    let attrs = Attrs::parse(cx, &CONTAINER, &input.attrs);
    if let Data::Struct(s) = &input.data {
        for field in &s.fields {
            attr::reject_attrs(
                cx,
                &field.attrs,
                "aggregate",
                "`#[aggregate(...)]` goes on the aggregate type, not on a field",
            );
        }
    }

    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|key| !attrs.has(key) && !attrs.was_suggested(key))
        .collect();
    if !missing.is_empty() {
        report_missing(cx, input, &attrs, &missing);
    }

    let name = attrs
        .get_str("name")
        .and_then(|lit| attr::check_name(cx, &lit, "name", "aggregate", NameRule::Aggregate));
    let event = attrs.get_type("event");
    let error = attrs.get_type("error");
    let commands = attrs.get_type_list("commands");
    let snapshot_every = if attrs.has("snapshot_every") {
        attrs.get_positive_int::<u64>("snapshot_every").map(|n| {
            let n = Literal::u64_unsuffixed(n);
            quote!(::core::option::Option::Some(#n))
        })
    } else {
        Some(quote!(::core::option::Option::None))
    };
    let state_version = if attrs.has("state_version") {
        attrs.get_positive_int::<u32>("state_version")
    } else {
        Some(1)
    };

    let krate = attrs.crate_path();
    let (name, event, error, commands, snapshot_every, state_version) = (
        name?,
        event?,
        error?,
        commands?,
        snapshot_every?,
        state_version?,
    );
    if !ok {
        return None;
    }
    let ident = &input.ident;
    let state_version = Literal::u32_unsuffixed(state_version);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    let check = if input.generics.params.is_empty() {
        // A derived event enum is checked to belong to the aggregate it names
        // (`#[event(aggregate = Order)]`, see `domain_event`). What that cannot see is
        // an aggregate declaring an enum that names another aggregate (or a
        // hand-written `DomainEvent` with another `AGGREGATE`): the enum's events
        // would be written to the other aggregate's topic. Point it at `event = ...`.
        let span = Span::call_site().located_at(event.span());
        let event_str = event.to_token_stream().to_string().replace(' ', "");
        let message = format!(
            "`{ident}` has `event = {event_str}`, but `{event_str}` is the event enum of \
             another aggregate (its `#[event(aggregate = ..)]` names another type, whose name \
             is not \"{name}\"): every aggregate needs its own event enum, declared with \
             `#[event(aggregate = {ident})]`"
        )
        .replace('{', "{{")
        .replace('}', "}}");
        quote_spanned! {span=>
            const _: () = if !#krate::__private::str_eq(
                <#event as #krate::DomainEvent>::AGGREGATE,
                #name,
            ) {
                ::core::panic!(#message);
            };
        }
    } else {
        // A generic type cannot be named in a free constant: no check.
        TokenStream::new()
    };

    // One `DeclaresCommand` impl per listed command, spanned at its name in the list:
    // its supertrait `Handle<C>` checks that the command has a handler, and the
    // command derive's check that the command is listed looks for it. The visit
    // calls' bound `C: Command<Aggregate = Self>` checks that it is a command of this
    // aggregate, spanned at the name too.
    let declares = commands.iter().map(|command| {
        let span = Span::call_site().located_at(command.span());
        // The missing-`Handle` error is reported at the impl's self type: give it
        // the command's span too.
        let self_ty = respan(quote!(#ident #ty_generics), span);
        quote_spanned! {span=>
            #[automatically_derived]
            impl #impl_generics #krate::DeclaresCommand<#command> for #self_ty #where_clause {}
        }
    });
    let names = commands.iter().map(|command| {
        let span = Span::call_site().located_at(command.span());
        quote_spanned!(span=> <#command as #krate::Command>::NAME)
    });
    let visits = commands.iter().map(|command| {
        let span = Span::call_site().located_at(command.span());
        quote_spanned!(span=> visitor.visit::<#command>();)
    });
    let visit_commands = if commands.is_empty() {
        // The trait's defaults: no commands.
        TokenStream::new()
    } else {
        quote! {
            const COMMANDS: &'static [&'static str] = &[#(#names),*];

            fn visit_commands<__TributaryVisitor: #krate::CommandVisitor<Self>>(
                visitor: &mut __TributaryVisitor,
            ) {
                #(#visits)*
            }
        }
    };

    // Two listed commands with one `Command::NAME` (e.g. both `name = "cancel"`):
    // the processor tells commands apart by name. Only the constant knows the names.
    let distinct_names = if input.generics.params.is_empty() && commands.len() > 1 {
        let span = Span::call_site().located_at(ident.span());
        let message = format!(
            "two commands in the command list of `{ident}` have the same name (`Command::NAME`, \
             the struct in snake_case or its `#[command(name = \"..\")]`): the processor tells \
             commands apart by name, so give one of them another name"
        )
        .replace('{', "{{")
        .replace('}', "}}");
        quote_spanned! {span=>
            const _: () = if #krate::__private::has_duplicate(
                <#ident as #krate::Aggregate>::COMMANDS,
            ) {
                ::core::panic!(#message);
            };
        }
    } else {
        TokenStream::new()
    };

    Some(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Aggregate for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            const SNAPSHOT_EVERY: ::core::option::Option<u64> = #snapshot_every;
            const STATE_VERSION: u32 = #state_version;
            type Event = #event;
            type Error = #error;
            #visit_commands
        }

        #(#declares)*

        #distinct_names

        #check
    })
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            }
            tree.set_span(span);
            tree
        })
        .collect()
}

fn report_missing(cx: &Ctxt, input: &DeriveInput, attrs: &Attrs<'_>, missing: &[&str]) {
    let base = input.ident.to_string();
    let base = base.strip_prefix("r#").unwrap_or(&base);
    let name = attr::suggest_name(base, NameRule::Aggregate).unwrap_or_else(|| "order".to_owned());
    let example = |key: &str| match key {
        "name" => format!("name = \"{name}\""),
        "event" => format!("event = {base}Event"),
        _ => format!("error = {base}Error"),
    };
    let keys = match missing {
        [one] => format!("key `{one}`"),
        [rest @ .., last] => format!(
            "keys {} and `{last}`",
            rest.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        [] => return,
    };
    let message = if attrs.is_absent() {
        format!(
            "missing `#[aggregate(...)]`: name the aggregate, its event enum and its error type, \
             e.g. `#[aggregate({})]` above `{base}`",
            REQUIRED.map(example).join(", ")
        )
    } else {
        let written: Vec<String> = missing.iter().map(|k| example(k)).collect();
        format!(
            "missing {keys} in `#[aggregate(...)]`: add `{}`",
            written.join(", ")
        )
    };
    match attrs.first_attr() {
        Some(attr) => cx.error_spanned_by(attr, message),
        None => cx.error_spanned_by(&input.ident, message),
    }
}

#[cfg(test)]
mod expansion_tests {
    use syn::parse_quote;

    use super::expand;
    use crate::attr::test_support::{expand_err, expand_ok};

    #[test]
    fn defaults_and_explicit_values() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[aggregate(name = "order", event = OrderEvent, error = OrderError)]
                struct Order { lines: Vec<Line> }
            },
        );
        for snippet in [
            "impl::tributary_core::AggregateforOrder",
            r#"constNAME:&'staticstr="order";"#,
            "constSNAPSHOT_EVERY:::core::option::Option<u64>=::core::option::Option::None;",
            "constSTATE_VERSION:u32=1;",
            "typeEvent=OrderEvent;",
            "typeError=OrderError;",
            // The reverse of the event derive's check: the enum names this aggregate.
            r#"::tributary_core::__private::str_eq(<OrderEventas::tributary_core::DomainEvent>::AGGREGATE,"order",)"#,
        ] {
            assert!(out.contains(snippet), "missing {snippet} in {out}");
        }

        let out = expand_ok(
            expand,
            &parse_quote! {
                #[aggregate(name = "door", event = DoorEvent, error = DoorError)]
                #[aggregate(snapshot_every = 250, state_version = 4, crate = "tb")]
                enum Door { Open, Closed }
            },
        );
        assert!(out.contains("::core::option::Option::Some(250)"), "{out}");
        assert!(out.contains("constSTATE_VERSION:u32=4;"), "{out}");
        assert!(out.contains("impltb::AggregateforDoor"), "{out}");
    }

    #[test]
    fn the_command_list_gives_names_visits_and_declarations() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[aggregate(name = "order", event = OrderEvent, error = OrderError,
                            commands(PlaceOrder, orders::Cancel, Annotate<String>))]
                struct Order;
            },
        );
        for snippet in [
            "constCOMMANDS:&'static[&'staticstr]=&[<PlaceOrderas::tributary_core::Command>::NAME,\
             <orders::Cancelas::tributary_core::Command>::NAME,\
             <Annotate<String>as::tributary_core::Command>::NAME];",
            "fnvisit_commands<__TributaryVisitor:::tributary_core::CommandVisitor<Self>>\
             (visitor:&mut__TributaryVisitor,){visitor.visit::<PlaceOrder>();\
             visitor.visit::<orders::Cancel>();visitor.visit::<Annotate<String>>();}",
            "impl::tributary_core::DeclaresCommand<PlaceOrder>forOrder{}",
            "impl::tributary_core::DeclaresCommand<orders::Cancel>forOrder{}",
            "impl::tributary_core::DeclaresCommand<Annotate<String>>forOrder{}",
            "const_:()=if::tributary_core::__private::has_duplicate(\
             <Orderas::tributary_core::Aggregate>::COMMANDS,){::core::panic!(",
        ] {
            assert!(out.contains(snippet), "missing {snippet} in {out}");
        }

        // Without a list: the trait's defaults (no commands), no declarations.
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[aggregate(name = "order", event = OrderEvent, error = OrderError)]
                struct Order;
            },
        );
        assert!(!out.contains("COMMANDS"), "{out}");
        assert!(!out.contains("DeclaresCommand"), "{out}");
        assert!(!out.contains("has_duplicate"), "{out}");
    }

    #[test]
    fn generic_aggregates_declare_for_every_instance() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[aggregate(name = "g", event = GEvent, error = GError, commands(Poke))]
                struct G<T: Clone> { t: T }
            },
        );
        assert!(
            out.contains("impl<T:Clone>::tributary_core::DeclaresCommand<Poke>forG<T>{}"),
            "{out}"
        );
    }

    #[test]
    fn bad_command_lists() {
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[aggregate(name = "order", event = OrderEvent, error = OrderError,
                            commands(PlaceOrder, Cancel, "Ship", 3, crate::PlaceOrder, PlaceOrder))]
                struct Order;
            },
        );
        let expected = [
            "`commands` lists types, not strings: write `Ship` without quotes",
            "`3` is not a type: `commands(...)` lists types by name or path",
            "`PlaceOrder` is listed twice in `commands(...)`: remove this one",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }

        for (input, expected) in [
            (
                parse_quote! {
                    #[aggregate(name = "o", event = E, error = F, commands = (A, B))]
                    struct O;
                },
                "`commands` takes its list without `=`: write `commands(A,B)`",
            ),
            (
                parse_quote! {
                    #[aggregate(name = "o", event = E, error = F, commands = A)]
                    struct O;
                },
                "`commands` takes a list in parentheses, without `=`: write `commands(A)`",
            ),
            (
                parse_quote! {
                    #[aggregate(name = "o", event = E, error = F, commands)]
                    struct O;
                },
                "`commands` needs a value: write `commands(PlaceOrder, CancelOrder)`",
            ),
            (
                parse_quote! {
                    #[aggregate(name = "o", event = E, error = F, comands(A))]
                    struct O;
                },
                "unknown key `comands` in `#[aggregate(...)]` on the aggregate; did you mean \
                 `commands`?",
            ),
        ] {
            let errors = expand_err(expand, &input);
            assert_eq!(errors, [expected]);
        }
    }

    #[test]
    fn generic_aggregate_has_no_free_constant_check() {
        let out = expand_ok(
            expand,
            &parse_quote! {
                #[aggregate(name = "g", event = GEvent, error = GError)]
                struct G<T> { t: T }
            },
        );
        assert!(
            out.contains("impl<T>::tributary_core::AggregateforG<T>"),
            "{out}"
        );
        assert!(!out.contains("str_eq"), "{out}");
    }

    #[test]
    fn missing_attribute_suggests_all_keys() {
        let errors = expand_err(
            expand,
            &parse_quote!(
                struct ShoppingCart;
            ),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(
                r#"`#[aggregate(name = "shopping_cart", event = ShoppingCartEvent, error = ShoppingCartError)]`"#
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_values() {
        let errors = expand_err(
            expand,
            &parse_quote! {
                #[aggregate(name = "order", event = OrderEvent, error = OrderError,
                            snapshot_every = 0, state_version = 99999999999, snapshot = 5)]
                struct Order;
            },
        );
        let expected = [
            "unknown key `snapshot` in `#[aggregate(...)]` on the aggregate; did you mean `snapshot_every`?",
            "`snapshot_every` must be at least 1",
            "`state_version` must be a positive integer that fits in `u32`",
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
