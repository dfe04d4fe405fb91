package busredis

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"topohub/hub"
)

func TestTicketMintRedeemOnce(t *testing.T) {
	ctx := context.Background()
	rdb := pkgRedis.Client(t)
	tk := NewTickets(rdb, testPrefix(), 0)
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	p := hub.Principal{User: "u1", Role: "viewer", Expires: exp, JTI: "jti-1"}

	ticket, ttl, err := tk.Mint(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if ttl != DefaultTicketTTL {
		t.Errorf("ttl %s, want %s", ttl, DefaultTicketTTL)
	}
	raw, err := base64.RawURLEncoding.DecodeString(ticket)
	if err != nil || len(raw) != 32 {
		t.Fatalf("ticket %d chars is not 256 bits of unpadded URL-safe base64 (%v)", len(ticket), err)
	}
	if pttl := rdb.PTTL(ctx, tk.Key(ticket)).Val(); pttl <= 59*time.Second || pttl > 60*time.Second {
		t.Errorf("key TTL %s, want 60s", pttl)
	}
	var stored map[string]any
	if err := json.Unmarshal([]byte(rdb.Get(ctx, tk.Key(ticket)).Val()), &stored); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"user": "u1", "role": "viewer", "exp": float64(exp.Unix()), "jti": "jti-1"}
	if len(stored) != len(want) {
		t.Errorf("stored %v, want %v", stored, want)
	}
	for k, v := range want {
		if stored[k] != v {
			t.Errorf("stored %s = %v, want %v", k, stored[k], v)
		}
	}

	got, err := tk.Redeem(ctx, ticket)
	if err != nil {
		t.Fatal(err)
	}
	if got != p {
		t.Errorf("redeemed %+v, want %+v", got, p)
	}
	if _, err := tk.Redeem(ctx, ticket); !errors.Is(err, hub.ErrTicketInvalid) {
		t.Fatalf("second redemption: %v, want ErrTicketInvalid", err)
	}
	// Another instance sharing the Redis cannot redeem it either.
	if _, err := NewTickets(pkgRedis.Client(t), tk.prefix, 0).Redeem(ctx, ticket); !errors.Is(err, hub.ErrTicketInvalid) {
		t.Fatalf("redemption on another instance: %v", err)
	}

	other, _, err := tk.Mint(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if other == ticket {
		t.Fatal("two mints gave the same ticket")
	}
}

func TestTicketWithoutExpOrJTI(t *testing.T) {
	ctx := context.Background()
	tk := NewTickets(pkgRedis.Client(t), testPrefix(), 0)
	p := hub.Principal{User: "u1", Role: "admin"}
	ticket, _, err := tk.Mint(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tk.Redeem(ctx, ticket); err != nil || got != p {
		t.Fatalf("redeemed %+v (%v), want %+v", got, err, p)
	}
}

func TestTicketExpires(t *testing.T) {
	ctx := context.Background()
	rdb := pkgRedis.Client(t)
	tk := NewTickets(rdb, testPrefix(), 300*time.Millisecond)
	ticket, ttl, err := tk.Mint(ctx, hub.Principal{User: "u1", Role: "viewer"})
	if err != nil || ttl != 300*time.Millisecond {
		t.Fatalf("mint: ttl %s, %v", ttl, err)
	}
	waitFor(t, 5*time.Second, "ticket key to expire", func() bool { return rdb.Exists(ctx, tk.Key(ticket)).Val() == 0 })
	if _, err := tk.Redeem(ctx, ticket); !errors.Is(err, hub.ErrTicketInvalid) {
		t.Fatalf("expired ticket: %v, want ErrTicketInvalid", err)
	}
}

func TestTicketConcurrentRedemptionExactlyOnce(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix()
	tk := NewTickets(pkgRedis.Client(t), prefix, 0)
	ticket, _, err := tk.Mint(ctx, hub.Principal{User: "u1", Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	// Two instances, each with its own connections, race for it.
	stores := []*Tickets{tk, NewTickets(pkgRedis.Client(t), prefix, 0)}
	var ok, invalid atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 50 {
		wg.Go(func() {
			<-start
			_, err := stores[i%2].Redeem(ctx, ticket)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, hub.ErrTicketInvalid):
				invalid.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	if ok.Load() != 1 || invalid.Load() != 49 {
		t.Fatalf("%d redemptions succeeded and %d were refused, want 1 and 49", ok.Load(), invalid.Load())
	}
}

func TestTicketMalformedNeverReachesRedis(t *testing.T) {
	// A dead Redis proves no round trip is made: it would give another error.
	tk := NewTickets(deadRedis(t), "", 0)
	valid := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	for _, s := range []string{"", "nope", valid + "A", valid[:42], valid[:42] + "*", valid[:42] + "=", "topohub:ticket:" + valid} {
		if _, err := tk.Redeem(context.Background(), s); !errors.Is(err, hub.ErrTicketInvalid) {
			t.Errorf("Redeem(%q) = %v, want ErrTicketInvalid", s, err)
		}
	}
}

func TestTicketCorruptValueIsInvalid(t *testing.T) {
	ctx := context.Background()
	rdb := pkgRedis.Client(t)
	tk := NewTickets(rdb, testPrefix(), 0)
	ticket := base64.RawURLEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	for _, v := range []string{"not json", `{"role":"viewer"}`} {
		rdb.Set(ctx, tk.Key(ticket), v, time.Minute)
		if _, err := tk.Redeem(ctx, ticket); !errors.Is(err, hub.ErrTicketInvalid) {
			t.Errorf("value %q: %v, want ErrTicketInvalid", v, err)
		}
	}
}

func TestTicketRedisDown(t *testing.T) {
	ctx := context.Background()
	tk := NewTickets(deadRedis(t), "", 0)
	if _, _, err := tk.Mint(ctx, hub.Principal{User: "u1"}); err == nil {
		t.Fatal("mint succeeded without Redis")
	}
	valid := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	_, err := tk.Redeem(ctx, valid)
	if err == nil || errors.Is(err, hub.ErrTicketInvalid) {
		t.Fatalf("redeem without Redis: %v, want an error other than ErrTicketInvalid", err)
	}
}
