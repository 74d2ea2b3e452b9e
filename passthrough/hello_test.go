package passthrough

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
)

// clientHello returns the bytes a crypto/tls client sends first for serverName.
func clientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	cli, srv := net.Pipe()
	go func() {
		c := tls.Client(cli, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
		_ = c.Handshake()
	}()
	defer cli.Close()
	defer srv.Close()
	var data []byte
	buf := make([]byte, 4096)
	for {
		n, err := srv.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, buf[:n]...)
		if _, err := serverName2(data); !errors.Is(err, errNeedMore) {
			return data
		}
	}
}

// serverName2 is serverName under another name, so that clientHello reads as a
// fixture and not as the code under test.
var serverName2 = serverName

// splitRecords re-frames a single-record hello into records of at most size bytes.
func splitRecords(hello []byte, size int) []byte {
	body := hello[recordHeaderLen:]
	var out []byte
	for len(body) > 0 {
		n := min(size, len(body))
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, body[:n]...)
		body = body[n:]
	}
	return out
}

func TestServerName(t *testing.T) {
	hello := clientHello(t, "API.Example.com")
	tests := []struct {
		name    string
		data    []byte
		want    string
		wantErr error
	}{
		{"whole hello", hello, "api.example.com", nil},
		{"hello and more bytes", append(append([]byte{}, hello...), 23, 3, 3, 0, 1, 0), "api.example.com", nil},
		{"split into 100-byte records", splitRecords(hello, 100), "api.example.com", nil},
		{"split into 1-byte records", splitRecords(hello, 1), "api.example.com", nil},
		{"first 3 bytes", hello[:3], "", errNeedMore},
		{"all but the last byte", hello[:len(hello)-1], "", errNeedMore},
		{"split, all but the last byte", splitRecords(hello, 100)[:len(splitRecords(hello, 100))-1], "", errNeedMore},
		{"plain HTTP", []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), "", errNotHello},
		{"a TLS alert", []byte{21, 3, 3, 0, 2, 2, 40}, "", errNotHello},
		{"empty record", []byte{22, 3, 1, 0, 0}, "", errNotHello},
		{"a ServerHello", []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, "", errNotHello},
		{"truncated hello body", []byte{22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3}, "", errNotHello},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := serverName(tt.data)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Errorf("got %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// A hello without SNI (a client connecting by IP address) routes nowhere.
func TestServerName_NoSNI(t *testing.T) {
	got, err := serverName(clientHello(t, "127.0.0.1"))
	if got != "" || err != nil {
		t.Errorf("got %q, %v; want no name, no error", got, err)
	}
}

func FuzzServerName(f *testing.F) {
	hello := clientHello(f, "a.example.com")
	f.Add(hello)
	f.Add(splitRecords(hello, 7))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		name, err := serverName(data)
		if err != nil && name != "" {
			t.Errorf("name %q with error %v", name, err)
		}
	})
}

func BenchmarkServerName(b *testing.B) {
	hello := clientHello(b, "api.example.com")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := serverName(hello); err != nil {
			b.Fatal(err)
		}
	}
}
