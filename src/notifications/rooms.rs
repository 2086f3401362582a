//! The hub channels of the `/notifications` namespace's rooms. Apart from the namespace, so
//! the node can name a user's room (to close a kicked user's sockets) without the feature.

/// The hub channel of a `/notifications` room (`user:5`, `sector:2`, `admin`).
pub fn room(name: &str) -> String {
    format!("notifications|{name}")
}

/// The room of every `/notifications` socket of a user.
pub fn user_room(user: &str) -> String {
    room(&format!("user:{user}"))
}
