package protocol

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Strict JSON (SPEC.md §3, "Strict JSON"). encoding/json alone accepts
// two things that let one byte string mean two things to two readers:
// a key that appears twice in one object (the last one wins), and a key
// that differs from a field name only in case ("Sequence" fills
// "sequence", so `{"sequence":1,"Sequence":9}` decodes as 9 although a
// reader that matches exactly sees 1). Every JSON that edgefleet reads
// from the network or from its own files goes through StrictUnmarshal or
// StrictUnmarshalExtensible, which refuse both before decoding.

// maxJSONDepth bounds the nesting a strict decode walks; edgefleet's
// messages nest four levels at most.
const maxJSONDepth = 64

// StrictUnmarshal decodes one JSON value from b into v (a pointer) and
// refuses: a key twice in one object, a key that matches a field of v's
// type only when case is ignored, a key that matches no field, and any
// data after the value. Errors name the key and its path; they do not
// wrap a sentinel (callers add theirs).
func StrictUnmarshal(b []byte, v any) error {
	return strictUnmarshal(b, v, false)
}

// StrictUnmarshalExtensible is StrictUnmarshal for records that a newer
// version may extend (the agent's state records, which an agent rolled
// back after a self-update must still read): keys that match no field
// are ignored; duplicates and case variants are still refused.
func StrictUnmarshalExtensible(b []byte, v any) error {
	return strictUnmarshal(b, v, true)
}

func strictUnmarshal(b []byte, v any, allowUnknown bool) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return errors.New("strict JSON: decode target must be a non-nil pointer")
	}
	if err := CheckJSONKeys(b, rv.Type().Elem(), allowUnknown); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if !allowUnknown {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

// CheckJSONKeys walks the JSON value in b along type t and refuses
// duplicate keys (in every object, also in maps and in values t does not
// describe), keys that match a field of a struct only when case is
// ignored, and, unless allowUnknown, keys that match no field. It checks
// syntax as far as it reads, and that nothing follows the value.
func CheckJSONKeys(b []byte, t reflect.Type, allowUnknown bool) error {
	w := keyWalker{dec: json.NewDecoder(bytes.NewReader(b)), allowUnknown: allowUnknown}
	w.dec.UseNumber()
	if err := w.value(t, "", 0); err != nil {
		return err
	}
	if _, err := w.dec.Token(); err != io.EOF {
		if err != nil {
			return fmt.Errorf("after the JSON value: %v", err)
		}
		return errors.New("data after the JSON value")
	}
	return nil
}

type keyWalker struct {
	dec          *json.Decoder
	allowUnknown bool
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// describe returns what the walker checks below a value of type t: nil
// when the value is opaque (any, a custom unmarshaler): then only
// duplicates are checked.
func describe(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() == reflect.Interface {
		return nil
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshalerType) || reflect.PointerTo(t).Implements(textUnmarshalerType) {
		return nil
	}
	return t
}

func (w *keyWalker) value(t reflect.Type, path string, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("JSON nested deeper than %d levels at %s", maxJSONDepth, pathName(path))
	}
	tok, err := w.dec.Token()
	if err != nil {
		return fmt.Errorf("not valid JSON at %s: %v", pathName(path), err)
	}
	t = describe(t)
	switch tok {
	case json.Delim('{'):
		return w.object(t, path, depth)
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; w.dec.More(); i++ {
			if err := w.value(elem, path+"["+strconv.Itoa(i)+"]", depth+1); err != nil {
				return err
			}
		}
		if _, err := w.dec.Token(); err != nil {
			return fmt.Errorf("not valid JSON at %s: %v", pathName(path), err)
		}
	}
	return nil
}

func (w *keyWalker) object(t reflect.Type, path string, depth int) error {
	var fields *structFields
	var elem reflect.Type
	if t != nil {
		switch t.Kind() {
		case reflect.Struct:
			fields = fieldsOf(t)
		case reflect.Map:
			elem = t.Elem()
		}
	}
	seen := map[string]bool{}
	for w.dec.More() {
		tok, err := w.dec.Token()
		if err != nil {
			return fmt.Errorf("not valid JSON at %s: %v", pathName(path), err)
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("not valid JSON at %s: object key is not a string", pathName(path))
		}
		kp := joinPath(path, key)
		if seen[key] {
			return fmt.Errorf("key %s appears twice; a reader could take either value, so the message is refused", pathName(kp))
		}
		seen[key] = true
		child := elem
		if fields != nil {
			f, exact := fields.exact[key]
			switch {
			case exact:
				child = f
			case fields.folded[foldName(key)] != "":
				return fmt.Errorf("key %s differs only in case from the field %q; keys must be written exactly as specified", pathName(kp), fields.folded[foldName(key)])
			case !w.allowUnknown:
				return fmt.Errorf("unknown key %s", pathName(kp))
			}
		}
		if err := w.value(child, kp, depth+1); err != nil {
			return err
		}
	}
	if _, err := w.dec.Token(); err != nil {
		return fmt.Errorf("not valid JSON at %s: %v", pathName(path), err)
	}
	return nil
}

// structFields are the JSON names of a struct's fields as encoding/json
// sees them: exact name → field type, and folded name → exact name.
type structFields struct {
	exact  map[string]reflect.Type
	folded map[string]string
}

var fieldCache sync.Map // reflect.Type → *structFields

func fieldsOf(t reflect.Type) *structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*structFields)
	}
	f := &structFields{exact: map[string]reflect.Type{}, folded: map[string]string{}}
	addFields(f, t, 0)
	fieldCache.Store(t, f)
	return f
}

func addFields(f *structFields, t reflect.Type, depth int) {
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if sf.Anonymous && name == "" {
			et := sf.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct && depth < 8 {
				addFields(f, et, depth+1)
				continue
			}
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		f.exact[name] = sf.Type
		f.folded[foldName(name)] = name
	}
}

// foldName folds a key the way encoding/json matches keys to fields
// (ASCII case, and Unicode simple folding such as "ſ" for "s" and the
// Kelvin sign for "k"), so every key it would match is caught.
func foldName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
			b.WriteRune(r)
			continue
		}
		b.WriteRune(unicode.ToUpper(unicode.ToLower(r)))
	}
	return b.String()
}

func joinPath(path, key string) string {
	k := strconv.Quote(clip(key))
	if path == "" {
		return k
	}
	return path + "." + k
}

func pathName(path string) string {
	if path == "" {
		return "the top level"
	}
	return path
}
