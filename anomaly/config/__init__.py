"""Config helpers: OmegaConf resolvers and checks that run before any data is read."""
