"""The click commands; each calls the domain modules and turns their errors into CLI errors."""
