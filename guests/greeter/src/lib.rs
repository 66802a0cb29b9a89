//! `greeter`: provides `local:greeter-demo/greet` (see `wit/greeter-demo/`) to
//! the component it is linked to. It serves no HTTP itself.
//!
//! The greeting word is the `GREETING` environment variable of the route that
//! uses it (default `Hello`): a linked component runs with the capabilities of
//! the route it serves. `greet("!trap")` panics, so that tests can see what a
//! trap inside a linked component does to the request.

use std::cell::Cell;

use bindings::exports::local::greeter_demo::greet::{
    Greeting, Guest, GuestCounter,
};

mod bindings {
    wit_bindgen::generate!({
        world: "local:greeter-demo/greeter",
        path: "../../wit/greeter-demo",
    });
}

/// The longest name `checked-greet` accepts, in characters.
const MAX_NAME_CHARS: usize = 64;

struct Greeter;

fn greeting_word() -> String {
    std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string())
}

impl Guest for Greeter {
    type Counter = Counter;

    fn greet(name: String) -> String {
        if name == "!trap" {
            panic!("greeter was asked to trap");
        }
        format!("{}, {name}!", greeting_word())
    }

    fn greet_all(names: Vec<String>) -> Vec<Greeting> {
        names
            .into_iter()
            .map(|name| {
                let text = Self::greet(name);
                let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
                Greeting { text, chars }
            })
            .collect()
    }

    fn checked_greet(name: String) -> Result<String, String> {
        let chars = name.chars().count();
        if chars == 0 {
            return Err("the name is empty".to_string());
        }
        if chars > MAX_NAME_CHARS {
            return Err(format!(
                "the name has {chars} characters; at most {MAX_NAME_CHARS} are allowed"
            ));
        }
        Ok(Self::greet(name))
    }
}

/// The `counter` resource: its state lives in this component's memory, and
/// the linked component holds only a handle to it.
struct Counter {
    prefix: String,
    count: Cell<u32>,
}

impl GuestCounter for Counter {
    fn new(prefix: String) -> Self {
        Counter {
            prefix,
            count: Cell::new(0),
        }
    }

    fn next(&self, name: String) -> String {
        let n = self.count.get() + 1;
        self.count.set(n);
        format!("{}{n}. {}", self.prefix, Greeter::greet(name))
    }

    fn count(&self) -> u32 {
        self.count.get()
    }
}

bindings::export!(Greeter with_types_in bindings);
