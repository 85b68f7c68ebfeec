//! The `dtu` command; see `dtu --help`.

fn main() -> anyhow::Result<()> {
    dtu::cli_main()
}
