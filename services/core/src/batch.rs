//! Splitting a batch of work into groups that may run at the same time.

use std::collections::HashMap;
use std::hash::Hash;

/// `items` in groups by `key`, each group in the items' order and the groups in the order of
/// their first item. An item whose key is `None` is a group of its own. Work on different
/// groups may then run concurrently while one group's runs one item after the other.
pub fn group_in_order<T, K, F>(items: impl IntoIterator<Item = T>, key: F) -> Vec<Vec<T>>
where
    K: Eq + Hash,
    F: Fn(&T) -> Option<K>,
{
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut group_of: HashMap<K, usize> = HashMap::new();
    for item in items {
        match key(&item) {
            Some(k) => {
                let g = *group_of.entry(k).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(item);
            }
            None => groups.push(vec![item]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_of_one_key_stay_together_and_in_order() {
        let items = [
            ("a", 1),
            ("b", 2),
            ("a", 3),
            ("-", 4),
            ("c", 5),
            ("b", 6),
            ("-", 7),
        ];
        let groups = group_in_order(items, |(k, _)| (*k != "-").then_some(*k));
        let numbers: Vec<Vec<i32>> = groups
            .iter()
            .map(|g| g.iter().map(|(_, n)| *n).collect())
            .collect();
        assert_eq!(
            numbers,
            vec![vec![1, 3], vec![2, 6], vec![4], vec![5], vec![7]]
        );
    }

    #[test]
    fn nothing_gives_no_group() {
        let groups = group_in_order(Vec::<u8>::new(), |n| Some(*n));
        assert!(groups.is_empty());
    }
}
