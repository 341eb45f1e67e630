package app_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/internal/app"
	"github.com/presenced/presenced/internal/testenv"
)

const authSecret = "s3cr3t-Hunter2"

// connect starts a Bus with cfg's NATSOptions against url and returns the
// error of Start (the Bus is stopped at the end of the test).
func connect(t *testing.T, url string, cfg config.Config) error {
	t.Helper()
	extra, err := app.NATSOptions(cfg)
	if err != nil {
		t.Fatalf("NATSOptions: %v", err)
	}
	b := bus.New(bus.Options{URL: url, ConnectTimeout: 2 * time.Second, Extra: extra})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = b.Start(ctx)
	if err == nil {
		t.Cleanup(func() { _ = b.Stop(context.Background()) })
	}
	return err
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func seedFile(t *testing.T, kp nkeys.KeyPair) string {
	t.Helper()
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "user.nk", seed)
}

// credsFile returns a credentials file for a new user of the account akp.
func credsFile(t *testing.T, akp nkeys.KeyPair) string {
	t.Helper()
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "user.creds", creds)
}

func TestNATSOptionsNone(t *testing.T) {
	opts, err := app.NATSOptions(config.Default())
	if err != nil || len(opts) != 0 {
		t.Fatalf("NATSOptions(Default()) = %d options, %v; want none", len(opts), err)
	}
}

// TestNATSOptionsAuth connects with each authentication method to a server
// that requires it, then with a wrong credential of the same kind, which
// must fail without the secret in the error.
func TestNATSOptionsAuth(t *testing.T) {
	t.Parallel()
	userKP, _ := nkeys.CreateUser()
	userPub, _ := userKP.PublicKey()
	strangerKP, _ := nkeys.CreateUser()

	// Operator mode (JWT) for the credentials file.
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	ojwt, err := jwt.NewOperatorClaims(opub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	oclaims, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ajwt, err := jwt.NewAccountClaims(apub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	otherAccount, _ := nkeys.CreateAccount() // not known to the server

	tests := []struct {
		name      string
		server    func(o *server.Options)
		good, bad func(c *config.Config)
	}{
		{
			name:   "user and password",
			server: func(o *server.Options) { o.Username, o.Password = "worker", authSecret },
			good:   func(c *config.Config) { c.NATSUser, c.NATSPassword = "worker", authSecret },
			bad:    func(c *config.Config) { c.NATSUser, c.NATSPassword = "worker", authSecret+"x" },
		},
		{
			name:   "token",
			server: func(o *server.Options) { o.Authorization = authSecret },
			good:   func(c *config.Config) { c.NATSToken = authSecret },
			bad:    func(c *config.Config) { c.NATSToken = authSecret + "x" },
		},
		{
			name:   "nkey seed file",
			server: func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: userPub}} },
			good:   func(c *config.Config) { c.NATSNkeySeedFile = seedFile(t, userKP) },
			bad:    func(c *config.Config) { c.NATSNkeySeedFile = seedFile(t, strangerKP) },
		},
		{
			name: "credentials file",
			server: func(o *server.Options) {
				r := &server.MemAccResolver{}
				if err := r.Store(apub, ajwt); err != nil {
					t.Fatal(err)
				}
				o.TrustedOperators = []*jwt.OperatorClaims{oclaims}
				o.AccountResolver = r
			},
			good: func(c *config.Config) { c.NATSCredsFile = credsFile(t, akp) },
			bad:  func(c *config.Config) { c.NATSCredsFile = credsFile(t, otherAccount) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := testenv.StartNATS(t, testenv.WithServerOptions(tt.server))
			good := config.Default()
			tt.good(&good)
			if err := good.Validate(); err != nil {
				t.Fatal(err)
			}
			if err := connect(t, n.URL(), good); err != nil {
				t.Fatalf("connect with the right credential: %v", err)
			}
			if err := connect(t, n.URL(), config.Default()); err == nil {
				t.Fatal("connected without credentials")
			}
			bad := config.Default()
			tt.bad(&bad)
			err := connect(t, n.URL(), bad)
			if err == nil {
				t.Fatal("connected with a wrong credential")
			}
			if !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
				t.Errorf("wrong credential: err = %v, want an authorization violation", err)
			}
			if strings.Contains(err.Error(), authSecret) {
				t.Fatalf("error contains the secret: %v", err)
			}
		})
	}
}

func TestNATSOptionsBadFiles(t *testing.T) {
	garbage := writeFile(t, "garbage", []byte("not a seed, not a JWT"))
	akp, _ := nkeys.CreateAccount()
	seedOnly := seedFile(t, akp) // an account seed: no JWT in it
	tests := []struct {
		name string
		mod  func(c *config.Config)
		want string
	}{
		{"seed garbage", func(c *config.Config) { c.NATSNkeySeedFile = garbage }, `invalid NATS_NKEY_SEED_FILE "` + garbage + `": `},
		{"seed of an account", func(c *config.Config) { c.NATSNkeySeedFile = seedOnly }, `invalid NATS_NKEY_SEED_FILE "` + seedOnly + `": `},
		{"creds garbage", func(c *config.Config) { c.NATSCredsFile = garbage }, `invalid NATS_CREDS_FILE "` + garbage + `": no user JWT: `},
		{"creds without JWT", func(c *config.Config) { c.NATSCredsFile = seedOnly }, `invalid NATS_CREDS_FILE "` + seedOnly + `": no user JWT: `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			tt.mod(&c)
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v (readable files pass; the content is NATSOptions' to check)", err)
			}
			_, err := app.NATSOptions(c)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("NATSOptions: err = %v, want it to start with %q", err, tt.want)
			}
		})
	}
}
