package fleet

import (
	"bytes"
	"errors"
	"testing"
)

// What Redis returns is input from outside: opening any bytes gives a value or an error,
// never a panic, and sealing then opening gives the value back.
func FuzzOpen(f *testing.F) {
	sealed, err := newStore(Options{Addr: "127.0.0.1:1", EncryptionKey: testKey(1)})
	if err != nil {
		f.Fatal(err)
	}
	plain, err := newStore(Options{Addr: "127.0.0.1:1"})
	if err != nil {
		f.Fatal(err)
	}
	defer sealed.rdb.Close()
	defer plain.rdb.Close()
	f.Add("a.test", []byte("value"), sealed.seal("a.test", []byte("value")))
	f.Add("a.test", []byte(""), plain.seal("a.test", nil))
	f.Add("b", []byte("x"), []byte(magicSealed+"12345678"))
	f.Fuzz(func(t *testing.T, name string, value, stored []byte) {
		for _, s := range []*Store{sealed, plain} {
			got, err := s.open(name, s.seal(name, value))
			if err != nil || !bytes.Equal(got, value) {
				t.Fatalf("seal then open: got %q, %v; want %q", got, err, value)
			}
			_, _ = s.open(name, stored)
		}
		if _, err := plain.open(name, sealed.seal(name, value)); !errors.Is(err, ErrWrongKey) {
			t.Fatalf("a sealed value opened without a key: got %v; want ErrWrongKey", err)
		}
	})
}
