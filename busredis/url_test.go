package busredis

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseURLShapes(t *testing.T) {
	tg, err := ParseURL("redis://u:pw@h1:7000/2", "")
	if err != nil || tg.Shape != ShapeSingle || tg.Single.Addr != "h1:7000" || tg.Single.DB != 2 || tg.Single.Username != "u" || tg.Single.Password != "pw" || tg.Single.TLSConfig != nil {
		t.Fatalf("single: %+v %v", tg, err)
	}
	tg, err = ParseURL("rediss://h1", "")
	if err != nil || tg.Single.Addr != "h1:6379" || tg.Single.TLSConfig == nil || tg.Single.TLSConfig.ServerName != "h1" {
		t.Fatalf("single TLS: %+v %v", tg, err)
	}
	tg, err = ParseURL("redis+sentinel://:pw@s1:26379?sentinel_master_name=mymaster&addr=s2:26379&addr=s3:26380&sentinel_password=spw", "")
	if err != nil || tg.Shape != ShapeSentinel {
		t.Fatalf("sentinel: %+v %v", tg, err)
	}
	if o := tg.Sentinel; o.MasterName != "mymaster" || !slices.Equal(o.SentinelAddrs, []string{"s1:26379", "s2:26379", "s3:26380"}) || o.Password != "pw" || o.SentinelPassword != "spw" || o.TLSConfig != nil {
		t.Fatalf("sentinel options: %+v", o)
	}
	tg, err = ParseURL("rediss+sentinel://s1?sentinel_master_name=m", "")
	if err != nil || tg.Sentinel.SentinelAddrs[0] != "s1:26379" || tg.Sentinel.TLSConfig == nil {
		t.Fatalf("sentinel TLS: %+v %v", tg, err)
	}
	tg, err = ParseURL("redis+cluster://u:pw@c1:7000?addr=c2:7001&addr=c3:7002", "")
	if err != nil || tg.Shape != ShapeCluster || !slices.Equal(tg.Cluster.Addrs, []string{"c1:7000", "c2:7001", "c3:7002"}) || tg.Cluster.Password != "pw" || tg.Cluster.Username != "u" {
		t.Fatalf("cluster: %+v %v", tg, err)
	}
	tg, err = ParseURL("rediss+cluster://c1:7000", "")
	if err != nil || tg.Cluster.TLSConfig == nil {
		t.Fatalf("cluster TLS: %+v %v", tg, err)
	}
}

func TestParseURLErrorsNeverShowThePassword(t *testing.T) {
	for _, raw := range []string{
		"http://u:s3cret@h:1",
		"redis://u:s3cret@h:port/0",
		"redis://u:s3cret@h:1/x",
		"redis://u:s3cret@:1",
		"redis://u:s3cret@h:1?addr=h2:2",
		"redis://u:s3cret@h:1?dial_timeout=3",
		"redis+sentinel://u:s3cret@h:1",
		"redis+sentinel://u:s3cret@h:1?sentinel_master_name=m&addr=bad",
		"redis+cluster://u:s3cret@h:1/3",
		"redis+cluster://u:s3cret@h:1?password=s3cret",
		"redis://u:s3cret@h:1\x7f",
		"redis://u:s3cret@h:1%zz",
	} {
		_, err := ParseURL(raw, "")
		if err == nil {
			t.Errorf("%q parsed", raw)
			continue
		}
		if !errors.Is(err, ErrBadURL) {
			t.Errorf("%q: %v does not wrap ErrBadURL", raw, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: error shows the password: %v", raw, err)
		}
	}
}

func TestParseURLCAFile(t *testing.T) {
	if _, err := ParseURL("redis://h:1", "/ca.pem"); err == nil {
		t.Error("a CA file with a plain redis:// URL was accepted")
	}
	if _, err := ParseURL("rediss://h:1", filepath.Join(t.TempDir(), "missing.pem")); err == nil {
		t.Error("a missing CA file was accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseURL("rediss://h:1", bad); err == nil {
		t.Error("a CA file without a certificate was accepted")
	}
}
