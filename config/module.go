package config

import "go.uber.org/fx"

// Module returns the fx module that provides c to the application. It
// validates c when the application is built, so a hand-made Config (tests,
// the demo, the bench) fails fast with the same error as Load.
//
// Unlike the other packages' Module values it is a function: it never reads
// os.Args itself, because parsing flags prints help and decides the exit
// code, which is cmd/presenced's job.
// cmd calls Load, handles flag.ErrHelp by printing Usage, then passes the
// result here:
//
//	cfg, err := config.Load(os.Args[1:], os.Getenv)
//	app := fx.New(config.Module(cfg), presence.Module, bus.Module, worker.Module)
func Module(c Config) fx.Option {
	return fx.Module("config",
		fx.Provide(func() (Config, error) {
			if err := c.Validate(); err != nil {
				return Config{}, err
			}
			return c, nil
		}),
	)
}
