//! The database and the notification queries.

use super::*;

/// The database and the notification queries.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// `mysql://user:pass@host:3306/db` (MySQL or MariaDB) or `postgres://user:pass@host:5432/db`
    /// (PostgreSQL) for `sql` policy rules and [notifications](docs/NOTIFICATIONS.md); connects on
    /// first use
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,

    /// Apply the database migrations (as `switchboard migrate` does) before serving
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_MIGRATE"
    )]
    pub migrate: bool,

    /// Longest a notification read or write may take before it counts as a database outage
    #[arg(help_heading = "Database and notifications", long, env = "SWITCHBOARD_DATABASE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// Query loading a `/notifications` user by id: id, name, email, role, sector_id, is_active
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_USER_QUERY",
        default_value = "SELECT id, name, email, role, sector_id, is_active FROM users WHERE id = ?"
    )]
    pub notifications_user_query: String,

    /// Query listing the ids of a sector's recipients (`sector_id` of POST /api/notifications)
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_SECTOR_QUERY",
        default_value = "SELECT id FROM users WHERE sector_id = ? AND is_active"
    )]
    pub notifications_sector_query: String,

    /// Query listing the ids of a role's recipients (`role` of POST /api/notifications; run once
    /// per role when it is a list)
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_ROLE_QUERY",
        default_value = "SELECT id FROM users WHERE role = ? AND is_active"
    )]
    pub notifications_role_query: String,

    /// Statement marking a notification read in the application's own table, with `:id` and
    /// `:user_id` (e.g. `UPDATE user_notifications SET is_read = TRUE WHERE id = :id AND user_id
    /// = :user_id AND NOT is_read`) [default: Switchboard's `notifications` table]
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_READ_QUERY"
    )]
    pub notifications_read_query: Option<String>,

    /// Roles whose `/notifications` sockets join the `admin` room, and whose JWT opens the [admin
    /// page](docs/OPERATIONS.md) (case-insensitive)
    #[arg(
        help_heading = "Database and notifications",
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_ADMIN_ROLES",
        value_delimiter = ',',
        default_value = "ADMIN,SUPER_ADMIN"
    )]
    pub notifications_admin_roles: Vec<String>,
}
